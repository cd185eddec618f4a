//! The binary's `check-config` and `mint-token` subcommands.

use std::process::Command;

fn backend() -> Command {
    Command::new(env!("CARGO_BIN_EXE_seckill-backend"))
}

#[test]
fn shipped_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/backend.toml");
    let out = backend().args(["check-config", path]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_configs_are_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (body, needle) in [
        ("[auth]\nsecret = \"short\"\n", "auth.secret"),
        ("[redis]\nurl = \"http://x\"\n", "redis.url"),
        ("[http]\nlisten = \"not an address\"\n", "listen"),
        ("[nope]\nx = 1\n", "nope"),
        ("[writer]\nbatch_size = 0\n", "writer.batch_size"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, body).unwrap();
        let out = backend()
            .arg("check-config")
            .arg(&path)
            .env_remove("SECKILL_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{body} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{body}: {err}");
    }
    let out = backend()
        .args(["check-config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn mint_token_prints_a_verifiable_token() {
    let out = backend()
        .args([
            "mint-token",
            "--sub",
            "alice",
            "--role",
            "approver",
            "--ttl-secs",
            "60",
        ])
        .env("SECKILL__AUTH__SECRET", "cli-test-secret-0123456789")
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let keys = seckill_backend::auth::TokenKeys::new(b"cli-test-secret-0123456789", 0);
    let claims = keys.verify(token.trim()).unwrap();
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.role, seckill_backend::auth::Role::Approver);
}
