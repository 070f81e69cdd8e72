//! Drives the real server binary with Python grpcio stubs generated from
//! proto/ (tests/python/grpc_client_test.py): a client nobody here wrote.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{repo, sample_index};

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn python_grpcio_client_passes_against_the_server_binary() {
    let python = std::env::var("VECREC_PYTHON")
        .ok()
        .or_else(|| {
            let p = repo().join(".cache/venv/bin/python");
            p.exists().then(|| p.display().to_string())
        })
        .expect("no Python venv: run `make setup`");
    let s = sample_index();
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_vecrec"))
            .args(["serve", "--addr", "127.0.0.1:0", "--index"])
            .arg(&s.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let start = Instant::now();
    let addr = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "server did not start"
        );
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.trim().to_owned();
        }
    };
    let out = Command::new(python)
        .arg(repo().join("tests/python/grpc_client_test.py"))
        .arg(&addr)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "python client failed:\n{text}");
    assert!(text.contains(" passed, 0 failed"), "{text}");

    // SIGTERM shuts the server down cleanly.
    let pid = child.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "server exited with {status}");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "server ignored SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
