//! The command grammar, loaded from grammar/*.ns.
