//! Running programs: the one place the agent starts child processes, behind a trait so the
//! argv (and what is piped in) can be checked in tests.

// The one place that starts processes (clippy.toml forbids it elsewhere).
#![allow(clippy::disallowed_types)]

use std::future::Future;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("command [{argv}] failed: {reason}")]
    Command { argv: String, reason: String },
    /// The input being piped to the command broke off (the child was stopped).
    #[error("reading the input for [{argv}]: {reason}")]
    Input { argv: String, reason: String },
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Chunks for a child's standard input as they arrive (an upload streamed through); an
/// `Err` means the source broke off.
pub type Input = tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>;

/// Runs commands.
pub trait CommandRunner: Send + Sync {
    /// Runs `argv` to completion, standard input closed. Blocking: call it off the async
    /// runtime (`sys::blocking`).
    fn run(&self, argv: &[String]) -> Result<(), ServiceError>;

    /// Runs `argv` with `input` streamed to its standard input, without blocking the runtime.
    fn run_piped(
        &self,
        argv: Vec<String>,
        input: Input,
    ) -> BoxFuture<'static, Result<(), ServiceError>>;
}

/// Runs commands on this machine, output to the daemon's stderr.
#[derive(Debug, Default, Clone)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&self, argv: &[String]) -> Result<(), ServiceError> {
        let joined = argv.join(" ");
        let (program, args) = argv.split_first().ok_or_else(|| ServiceError::Command {
            argv: joined.clone(),
            reason: "empty command".into(),
        })?;
        let status = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .map_err(|e| ServiceError::Command {
                argv: joined.clone(),
                reason: e.to_string(),
            })?;
        exit_result(joined, status)
    }

    fn run_piped(
        &self,
        argv: Vec<String>,
        mut input: Input,
    ) -> BoxFuture<'static, Result<(), ServiceError>> {
        Box::pin(async move {
            let joined = argv.join(" ");
            let fail = |reason: String| ServiceError::Command {
                argv: joined.clone(),
                reason,
            };
            let (program, args) = argv
                .split_first()
                .ok_or_else(|| fail("empty command".into()))?;
            let mut child = tokio::process::Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| fail(e.to_string()))?;
            if let Some(mut stdin) = child.stdin.take() {
                while let Some(chunk) = input.recv().await {
                    let chunk = chunk.map_err(|reason| ServiceError::Input {
                        argv: joined.clone(),
                        reason,
                    })?;
                    // The child may stop reading early; its exit status tells why.
                    if stdin.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            }
            let status = child.wait().await.map_err(|e| fail(e.to_string()))?;
            exit_result(joined, status)
        })
    }
}

fn exit_result(argv: String, status: std::process::ExitStatus) -> Result<(), ServiceError> {
    if status.success() {
        Ok(())
    } else {
        Err(ServiceError::Command {
            argv,
            reason: format!("exit status {}", status.code().unwrap_or(-1)),
        })
    }
}

/// Records argv (and piped input) instead of running anything; for tests.
#[derive(Debug, Default, Clone)]
pub struct RecordingRunner {
    pub argvs: Arc<Mutex<Vec<Vec<String>>>>,
    /// What `run_piped` received, per call.
    pub inputs: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RecordingRunner {
    pub fn argvs(&self) -> Vec<Vec<String>> {
        self.argvs.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl CommandRunner for RecordingRunner {
    fn run(&self, argv: &[String]) -> Result<(), ServiceError> {
        if let Ok(mut a) = self.argvs.lock() {
            a.push(argv.to_vec());
        }
        Ok(())
    }

    fn run_piped(
        &self,
        argv: Vec<String>,
        mut input: Input,
    ) -> BoxFuture<'static, Result<(), ServiceError>> {
        let me = self.clone();
        Box::pin(async move {
            let mut received = Vec::new();
            while let Some(chunk) = input.recv().await {
                received.extend(chunk.map_err(|reason| ServiceError::Input {
                    argv: argv.join(" "),
                    reason,
                })?);
            }
            if let Ok(mut a) = me.argvs.lock() {
                a.push(argv);
            }
            if let Ok(mut i) = me.inputs.lock() {
                i.push(received);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_command_reports_argv() {
        let err = SystemRunner
            .run(&["false".to_string()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("[false]"), "{err}");
    }

    #[tokio::test]
    async fn piped_input_reaches_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        let argv = vec![
            "sh".to_string(),
            "-c".into(),
            format!("cat > {}", out.display()),
        ];
        let run = SystemRunner.run_piped(argv, rx);
        tx.send(Ok(b"IMAGE".to_vec())).await.unwrap();
        tx.send(Ok(b"DATA".to_vec())).await.unwrap();
        drop(tx);
        run.await.unwrap();
        assert_eq!(crate::state::read_string(&out).unwrap(), "IMAGEDATA");
    }

    #[tokio::test]
    async fn a_broken_input_is_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let run = SystemRunner.run_piped(vec!["cat".into()], rx);
        tx.send(Err("connection reset".into())).await.unwrap();
        let err = run.await.unwrap_err().to_string();
        assert!(err.contains("connection reset"), "{err}");
    }
}
