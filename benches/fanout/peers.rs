//! Registry peers: the broadcast servers people actually deploy, installed by the harness from
//! the registries (Node.js `ws` from npm, Python `websockets` from PyPI) into
//! `results/tmp/peers/`, each a few lines of broadcast written as its docs show
//! (`benches/fanout/peers/`). A peer whose runtime is missing, or whose install fails, is
//! skipped with the reason, which the results then show.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Pinned so reruns measure the same code.
pub const WS_VERSION: &str = "8.23.0";
pub const WEBSOCKETS_VERSION: &str = "17.4";

/// How to start a ready peer: `program args… HOST PORT` with `envs`.
#[derive(Debug, Clone)]
pub struct Peer {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    /// e.g. `Node.js v20.20.2, ws 8.23.0`.
    pub version: String,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        Ok(o) => Err(format!(
            "{shown} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("")
        )),
        Err(e) => Err(format!("{shown}: {e}")),
    }
}

/// Node.js + `ws` from npm.
pub fn node_ws(workspace: &Path) -> Result<Peer, String> {
    let node_version =
        run(Command::new("node").arg("--version")).map_err(|e| format!("no Node.js: {e}"))?;
    let dir = workspace.join("results/tmp/peers/node");
    let pkg = dir.join("node_modules/ws/package.json");
    let installed = std::fs::read_to_string(&pkg)
        .ok()
        .is_some_and(|t| t.contains(&format!("\"version\": \"{WS_VERSION}\"")));
    if !installed {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        eprintln!("fanout: installing ws@{WS_VERSION} from npm into {}", dir.display());
        run(Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
            .arg(&dir)
            .arg(format!("ws@{WS_VERSION}")))
        .map_err(|e| format!("npm install ws: {e}"))?;
    }
    let script = workspace.join("benches/fanout/peers/ws-broadcast.js");
    Ok(Peer {
        program: PathBuf::from("node"),
        args: vec![script.display().to_string()],
        envs: vec![("NODE_PATH".into(), dir.join("node_modules").display().to_string())],
        version: format!("Node.js {node_version}, ws {WS_VERSION}"),
    })
}

/// Python + `websockets` from PyPI, in a virtualenv.
pub fn python_websockets(workspace: &Path) -> Result<Peer, String> {
    // The real interpreter (not a pyenv shim), so the server's PID is Python's own.
    let python = run(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .map_err(|e| format!("no Python 3: {e}"))?;
    let venv = workspace.join("results/tmp/peers/venv");
    let vpy = venv.join("bin/python");
    if !vpy.is_file() {
        eprintln!("fanout: creating a virtualenv in {}", venv.display());
        run(Command::new(&python).args(["-m", "venv"]).arg(&venv))
            .map_err(|e| format!("python3 -m venv: {e}"))?;
    }
    let have =
        run(Command::new(&vpy).args(["-c", "import websockets; print(websockets.__version__)"]));
    if have.as_deref() != Ok(WEBSOCKETS_VERSION) {
        eprintln!("fanout: installing websockets=={WEBSOCKETS_VERSION} from PyPI");
        run(Command::new(&vpy)
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .arg(format!("websockets=={WEBSOCKETS_VERSION}")))
        .map_err(|e| format!("pip install websockets: {e}"))?;
    }
    let py_version = run(Command::new(&vpy).arg("--version")).unwrap_or_default();
    let script = workspace.join("benches/fanout/peers/websockets_broadcast.py");
    Ok(Peer {
        program: vpy,
        args: vec![script.display().to_string()],
        envs: vec![("PYTHONUNBUFFERED".into(), "1".into())],
        version: format!("{py_version}, websockets {WEBSOCKETS_VERSION}"),
    })
}
