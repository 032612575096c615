//! Console, control socket, cli and check modes; NetScaler-style rendering.
