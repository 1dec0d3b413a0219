// Tests for Rust functions shown in docs/TAURI.md. tests/test_tauri_rust.py cuts the functions out of
// the page verbatim, appends this module and runs it with `rustc --test`.

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn drain_survives_a_line_that_is_not_utf8() {
        // A Latin-1 line, then 300 KB (more than a pipe holds: a stopped drain would block `sh`).
        let script = "exec 1>&2; printf 'one\\n\\377\\376 bad \\351t\\351\\r\\n'; i=0; \
                      while [ $i -lt 3000 ]; do printf '%0100d\\n' $i; i=$((i+1)); done; \
                      printf 'last\\n'";
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = Vec::new();
        drain_stderr(stderr, |l| lines.push(l.to_string()));
        assert!(child.wait().unwrap().success());
        assert_eq!(lines.len(), 3003);
        assert_eq!(lines[0], "one");
        assert_eq!(lines[1], "\u{FFFD}\u{FFFD} bad \u{FFFD}t\u{FFFD}");
        assert_eq!(lines[3002], "last");
    }

    #[test]
    fn the_old_drain_stops_at_the_first_non_utf8_line() {
        let data: &[u8] = b"one\n\xff bad\nthree\n";
        let got: Vec<String> = BufReader::new(data).lines().map_while(Result::ok).collect();
        assert_eq!(got, vec!["one".to_string()]);
    }

    #[test]
    fn spawn_errors_name_the_cause() {
        let exe = Path::new(r"C:\Program Files\Trispr Flow\vibevoice-rpc\vibevoice-rpc.exe");
        let gone = spawn_error_message(&io::Error::from_raw_os_error(2), exe);
        assert!(gone.contains("quarantined") && gone.contains("vibevoice-rpc.exe"));
        let virus = spawn_error_message(&io::Error::from_raw_os_error(225), exe);
        assert!(virus.contains("Windows Security blocked"));
        let policy = spawn_error_message(&io::Error::from_raw_os_error(4551), exe);
        assert!(policy.contains("Smart App Control"));
        let other = spawn_error_message(&io::Error::from_raw_os_error(8), exe);
        assert!(other.contains("could not be started"));
    }
}
