//! The interactive shell (rustyline): `> ` prompt, history, TAB completion and `?` help, over
//! either the in-process appliance (the console) or a control-socket session (`nsemu cli`).

use std::sync::{Arc, Mutex};

use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{
    Cmd, ConditionalEventHandler, Context, Event, EventContext, EventHandler, KeyEvent, RepeatCount,
};

use crate::cli::complete::{candidates, help_lines};

use super::appliance::Reply;

/// Where the shell's commands go.
pub trait Backend: Send {
    fn execute(&mut self, line: &str) -> Result<Reply, String>;
    fn names(&mut self, key: &str) -> Vec<String>;
}

type Shared = Arc<Mutex<Box<dyn Backend>>>;

fn names_of(backend: &Shared) -> impl Fn(&str) -> Vec<String> + '_ {
    move |k: &str| backend.lock().map(|mut b| b.names(k)).unwrap_or_default()
}

struct ShellHelper {
    backend: Shared,
}

impl Completer for ShellHelper {
    type Candidate = Pair;
    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let names = names_of(&self.backend);
        let (start, c) = candidates(&line[..pos], &names);
        Ok((
            start,
            c.into_iter()
                .map(|c| Pair {
                    display: c.word.clone(),
                    replacement: format!("{} ", c.word),
                })
                .collect(),
        ))
    }
}

impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}
impl rustyline::Helper for ShellHelper {}

/// `?` lists what may come next, unless it is typed inside quotes.
struct QuestionMark {
    backend: Shared,
}

impl ConditionalEventHandler for QuestionMark {
    fn handle(
        &self,
        _evt: &Event,
        _n: RepeatCount,
        _positive: bool,
        ctx: &EventContext,
    ) -> Option<Cmd> {
        let before = &ctx.line()[..ctx.pos()];
        if before.matches('"').count() % 2 == 1 || before.matches('\'').count() % 2 == 1 {
            return None;
        }
        let names = names_of(&self.backend);
        let lines = help_lines(before, &names);
        println!();
        for l in lines {
            println!("{l}");
        }
        Some(Cmd::Repaint)
    }
}

/// Runs the interactive shell until `exit`, `quit` or end of input. Returns true if every command
/// succeeded.
pub fn interactive(backend: Box<dyn Backend>, history: Option<std::path::PathBuf>) -> bool {
    let backend: Shared = Arc::new(Mutex::new(backend));
    let mut rl = match rustyline::Editor::<ShellHelper, rustyline::history::DefaultHistory>::new() {
        Ok(rl) => rl,
        Err(e) => {
            eprintln!("nsemu: cannot start the shell: {e}");
            return false;
        }
    };
    rl.set_helper(Some(ShellHelper {
        backend: backend.clone(),
    }));
    rl.bind_sequence(
        KeyEvent::from('?'),
        EventHandler::Conditional(Box::new(QuestionMark {
            backend: backend.clone(),
        })),
    );
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    let mut all_ok = true;
    loop {
        match rl.readline("> ") {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let _ = rl.add_history_entry(line.as_str());
                let reply = backend
                    .lock()
                    .map_err(|_| "shell state poisoned".to_string())
                    .and_then(|mut b| b.execute(&line));
                match reply {
                    Ok(r) => {
                        print!("{}", r.text);
                        all_ok &= r.ok;
                        if r.exit {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("nsemu: {e}");
                        all_ok = false;
                        break;
                    }
                }
            }
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        }
    }
    if let Some(h) = &history {
        let _ = rl.save_history(h);
    }
    all_ok
}

/// Runs commands read from `input` (a piped script), echoing each one and its result. Returns
/// true if every command succeeded. Stops at `exit`/`quit`.
pub fn script(backend: &mut dyn Backend, input: impl std::io::BufRead, echo: bool) -> bool {
    let mut all_ok = true;
    for line in input.split(b'\n') {
        let Ok(raw) = line else { break };
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if echo {
            println!("> {line}");
        }
        match backend.execute(line) {
            Ok(r) => {
                print!("{}", r.text);
                all_ok &= r.ok;
                if r.exit {
                    break;
                }
            }
            Err(e) => {
                eprintln!("nsemu: {e}");
                return false;
            }
        }
    }
    all_ok
}
