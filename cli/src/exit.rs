//! The CLI's exit codes: one mapping from an error to a code, documented in `--help`.

/// Success.
pub const OK: u8 = 0;
/// Any other error.
pub const OTHER: u8 = 1;
/// Bad usage (unknown flag, missing argument): clap's own code.
pub const USAGE: u8 = 2;
/// What was named does not exist (gRPC NOT_FOUND).
pub const NOT_FOUND: u8 = 3;
/// No valid credential, or the role does not allow it (UNAUTHENTICATED, PERMISSION_DENIED).
pub const DENIED: u8 = 4;
/// The request was refused as invalid (INVALID_ARGUMENT, OUT_OF_RANGE).
pub const INVALID: u8 = 5;
/// The control plane or a node could not be reached or answered too late (UNAVAILABLE,
/// DEADLINE_EXCEEDED, a connection that failed).
pub const UNAVAILABLE: u8 = 6;
/// The state does not allow it now (ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED).
pub const CONFLICT: u8 = 7;

/// The exit codes as `diplo --help` lists them.
pub const HELP: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage error (unknown flag, missing argument)
  3  not found
  4  unauthenticated or permission denied
  5  invalid argument
  6  control plane or node unavailable, or timed out
  7  conflict: already exists, or not possible in the current state
`diplo containers exec` exits with the command's own exit code.";

/// A gRPC status kept as the error (its message is what the user reads), so that the
/// exit code can follow its class.
#[derive(Debug)]
pub struct StatusError(pub tonic::Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.message())
    }
}

impl std::error::Error for StatusError {}

/// The exit code of a gRPC status code.
pub fn code_of_status(code: tonic::Code) -> u8 {
    use tonic::Code;
    match code {
        Code::Ok => OK,
        Code::NotFound => NOT_FOUND,
        Code::Unauthenticated | Code::PermissionDenied => DENIED,
        Code::InvalidArgument | Code::OutOfRange => INVALID,
        Code::Unavailable | Code::DeadlineExceeded => UNAVAILABLE,
        Code::AlreadyExists | Code::FailedPrecondition | Code::Aborted => CONFLICT,
        _ => OTHER,
    }
}

/// The exit code of an error: its gRPC status's class, a connection failure as
/// unavailable, anything else 1.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(StatusError(status)) = cause.downcast_ref::<StatusError>() {
            return code_of_status(status.code());
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return code_of_status(status.code());
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() || cause.downcast_ref::<tokio::time::error::Elapsed>().is_some() {
            return UNAVAILABLE;
        }
    }
    OTHER
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn errors_map_to_documented_codes() {
        let cases = [
            (Code::NotFound, 3),
            (Code::PermissionDenied, 4),
            (Code::Unauthenticated, 4),
            (Code::InvalidArgument, 5),
            (Code::OutOfRange, 5),
            (Code::Unavailable, 6),
            (Code::DeadlineExceeded, 6),
            (Code::AlreadyExists, 7),
            (Code::FailedPrecondition, 7),
            (Code::Internal, 1),
            (Code::Unimplemented, 1),
        ];
        for (code, exit) in cases {
            let err = anyhow::Error::new(StatusError(Status::new(code, "boom")));
            assert_eq!(exit_code(&err), exit, "{code:?}");
            assert_eq!(exit_code(&err.context("while doing things")), exit, "{code:?} under context");
            assert!(HELP.contains(&format!("  {exit}  ")), "{exit} is documented");
        }
        assert_eq!(exit_code(&anyhow::anyhow!("no CLI config found")), OTHER);
        assert_eq!(USAGE, 2);
    }
}
