//! The command line and environment of `Runner.Listener`, read as actions/runner's
//! `CommandSettings` reads them: `run [--jitconfig <config>]` (or the older bare
//! `--jitconfig <config>`), and every `ACTIONS_RUNNER_INPUT_<NAME>` variable as input `<name>`.
//! A flag wins over the environment, as in the real runner. The inputs leave the process
//! environment as soon as they are read, so no step inherits the JIT config; no error repeats a
//! value from the command line.

use std::collections::BTreeMap;
use std::ffi::OsString;

use secrecy::SecretString;

/// Environment variables with this prefix (any case) are runner inputs, as in actions/runner.
pub const ENV_PREFIX: &str = "ACTIONS_RUNNER_INPUT_";
/// The input that carries the encoded JIT config.
pub const JITCONFIG: &str = "jitconfig";

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("unknown flag {0}")]
    UnknownFlag(String),
    #[error("unexpected argument {0} (only `run` and --jitconfig are supported)")]
    UnexpectedArgument(usize),
    #[error("--jitconfig needs a non-empty value")]
    MissingValue,
    #[error("--jitconfig is given twice")]
    Twice,
    #[error("an argument is not valid UTF-8")]
    NotUtf8,
    #[error(
        "no JIT config: set {ENV_PREFIX}JITCONFIG (preferred) or pass --jitconfig \
         <encoded_jit_config>; JIT configuration is the only one this runner supports"
    )]
    NoJitConfig,
}

/// Usage text for errors.
pub const USAGE: &str = "usage: Runner.Listener run [--jitconfig <encoded_jit_config>]
       (or set ACTIONS_RUNNER_INPUT_JITCONFIG instead of passing --jitconfig)";

/// Takes every runner input out of `vars` (the process environment in `main`): returns the inputs
/// by lower-case name (empty values dropped, as the real runner does) and the variable names to
/// remove from the environment.
pub fn split_env_inputs(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> (BTreeMap<String, SecretString>, Vec<OsString>) {
    let mut inputs = BTreeMap::new();
    let mut names = Vec::new();
    for (key, value) in vars {
        let Some(name) = key.to_str().and_then(input_name) else {
            continue;
        };
        let value = value.to_string_lossy();
        let value = value.trim();
        if !value.is_empty() {
            inputs.insert(name, SecretString::from(value.to_owned()));
        }
        names.push(key);
    }
    (inputs, names)
}

/// `ACTIONS_RUNNER_INPUT_JITCONFIG` → `jitconfig`; `None` for any other variable.
pub fn input_name(key: &str) -> Option<String> {
    let prefix = key.get(..ENV_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(ENV_PREFIX)
        .then(|| key[ENV_PREFIX.len()..].to_ascii_lowercase())
}

/// The JIT config from the command line or, failing that, the environment's inputs.
pub fn jitconfig(
    args: &[OsString],
    mut env_inputs: BTreeMap<String, SecretString>,
) -> Result<SecretString, UsageError> {
    let args = args
        .iter()
        .map(|a| a.to_str().ok_or(UsageError::NotUtf8))
        .collect::<Result<Vec<&str>, _>>()?;
    let rest = match args.split_first() {
        Some((command, rest)) if command.eq_ignore_ascii_case("run") => rest,
        _ => &args[..],
    };
    let mut flag = None;
    let mut iter = rest.iter().enumerate();
    while let Some((i, arg)) = iter.next() {
        if arg.eq_ignore_ascii_case("--jitconfig") {
            let value = iter
                .next()
                .map(|(_, v)| *v)
                .filter(|v| !v.trim().is_empty())
                .ok_or(UsageError::MissingValue)?;
            if flag.replace(value).is_some() {
                return Err(UsageError::Twice);
            }
        } else if let Some(name) = arg.strip_prefix("--") {
            // The flag's name only: `--jitconfig=<config>` must not echo the config.
            let name = name.split('=').next().unwrap_or_default();
            return Err(UsageError::UnknownFlag(format!("--{name}")));
        } else {
            // Its position, not its value: a misplaced config must not be echoed either.
            let position = i + 1 + args.len() - rest.len();
            return Err(UsageError::UnexpectedArgument(position));
        }
    }
    match flag {
        Some(value) => Ok(SecretString::from(value.trim().to_owned())),
        None => env_inputs.remove(JITCONFIG).ok_or(UsageError::NoJitConfig),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use secrecy::ExposeSecret;

    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn env(config: Option<&str>) -> BTreeMap<String, SecretString> {
        config
            .map(|c| (JITCONFIG.to_owned(), SecretString::from(c.to_owned())))
            .into_iter()
            .collect()
    }

    fn parse(list: &[&str], config: Option<&str>) -> Result<String, UsageError> {
        jitconfig(&args(list), env(config)).map(|s| s.expose_secret().to_owned())
    }

    #[test]
    fn takes_the_config_from_the_flag_then_from_the_environment() {
        assert_eq!(parse(&["run", "--jitconfig", "abc"], None).unwrap(), "abc");
        assert_eq!(parse(&["--jitconfig", "abc"], None).unwrap(), "abc");
        assert_eq!(parse(&["run"], Some("env")).unwrap(), "env");
        assert_eq!(parse(&[], Some("env")).unwrap(), "env");
        // As in actions/runner's CommandSettings.GetArg: the command line wins.
        assert_eq!(
            parse(&["run", "--jitconfig", "abc"], Some("env")).unwrap(),
            "abc"
        );
        assert_eq!(
            parse(&["RUN", "--JitConfig", " abc\n"], None).unwrap(),
            "abc"
        );
    }

    #[test]
    fn refuses_bad_command_lines_without_echoing_values() {
        assert_eq!(parse(&[], None), Err(UsageError::NoJitConfig));
        assert_eq!(parse(&["run"], None), Err(UsageError::NoJitConfig));
        assert_eq!(
            parse(&["run", "--jitconfig"], Some("env")),
            Err(UsageError::MissingValue)
        );
        assert_eq!(
            parse(&["--jitconfig", " "], None),
            Err(UsageError::MissingValue)
        );
        assert_eq!(
            parse(&["--jitconfig", "a", "--jitconfig", "b"], None),
            Err(UsageError::Twice)
        );
        let unknown = parse(&["run", "--jitconfig=s3cret"], None).unwrap_err();
        assert_eq!(unknown, UsageError::UnknownFlag("--jitconfig".into()));
        let stray = parse(&["run", "s3cret"], None).unwrap_err();
        assert_eq!(stray, UsageError::UnexpectedArgument(2));
        assert_eq!(
            parse(&["configure", "--url", "x"], None),
            Err(UsageError::UnexpectedArgument(1))
        );
        for error in [unknown, stray] {
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn every_input_variable_is_taken_out_of_the_environment() {
        let vars = [
            ("ACTIONS_RUNNER_INPUT_JITCONFIG", " abc \n"),
            ("actions_runner_input_token", "t"),
            ("ACTIONS_RUNNER_INPUT_EMPTY", "  "),
            ("ACTIONS_RUNNER_INPUT", "not an input"),
            ("HOME", "/home/runner"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let (inputs, names) = split_env_inputs(vars);
        assert_eq!(inputs.keys().collect::<Vec<_>>(), ["jitconfig", "token"]);
        assert_eq!(inputs["jitconfig"].expose_secret(), "abc");
        assert_eq!(
            names,
            [
                "ACTIONS_RUNNER_INPUT_JITCONFIG",
                "actions_runner_input_token",
                "ACTIONS_RUNNER_INPUT_EMPTY"
            ]
        );
        assert_eq!(input_name("ACTIONS_RUNNER_INPUT_"), Some(String::new()));
        assert_eq!(input_name("ACTIONS_RUNNER"), None);
        assert_eq!(input_name("ÄCTIONS_RUNNER_INPUT_X"), None);
    }
}
