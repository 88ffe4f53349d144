//! `convoy check [FILE] [--config PATH]`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::config::Config;
use crate::plan::waves;

use super::model::ConvoySpec;
use super::validate::{CheckContext, SpecError, parse_spec_bytes};
use super::yaml::Pos;

/// Loads the operator config for the offline commands (`check`, `plan`).
/// They only need the drivers and limits, so a missing webhook secret (which
/// `serve` insists on) must not stop them: a placeholder stands in for it.
pub fn load_config_for_checks(path: &Path) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if !env.iter().any(|(k, _)| k == "CONVOY_GITHUB_WEBHOOK_SECRET") {
        env.push((
            "CONVOY_GITHUB_WEBHOOK_SECRET".into(),
            "unused-by-offline-commands".into(),
        ));
    }
    Config::from_toml(&text, &path.display().to_string(), &env).map_err(|e| e.to_string())
}

/// The one-line summary printed when the file is valid, counting the waves
/// that receive environments (the implicit `rest` included when it does).
pub fn summary_line(file: &str, spec: &ConvoySpec) -> String {
    let assignment = waves::assign(spec);
    let waves = assignment.waves.iter().filter(|w| !w.is_empty()).count();
    let plural = |n: usize, one: &str| format!("{n} {one}{}", if n == 1 { "" } else { "s" });
    format!(
        "{file}: OK: {}, {}, {}",
        plural(spec.services.len(), "service"),
        plural(spec.environments.len(), "environment"),
        plural(waves, "wave"),
    )
}

/// Runs the check and prints to stdout. Exit 0 when valid, 1 on validation
/// errors, 2 when the file or the config cannot be read at all.
pub fn check_main(file: Option<&Path>, config: Option<&Path>) -> ExitCode {
    let file = file.unwrap_or(Path::new("convoy.yml"));
    let shown = file.display().to_string();
    let mut out = std::io::stdout().lock();
    let config = match config.map(load_config_for_checks).transpose() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let ctx = config
        .as_ref()
        .map(CheckContext::from_config)
        .unwrap_or_default();
    // A file over the cap is reported with its real size without reading it.
    if let Ok(meta) = std::fs::metadata(file)
        && meta.len() > ctx.limits.max_bytes as u64
    {
        let e = SpecError {
            pos: Pos::START,
            message: format!(
                "file is {} bytes; at most {} bytes are allowed",
                meta.len(),
                ctx.limits.max_bytes
            ),
        };
        let _ = writeln!(out, "{}", e.render(&shown));
        return ExitCode::from(1);
    }
    let bytes = match read_capped(file, ctx.limits.max_bytes) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {shown}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    match parse_spec_bytes(&bytes, &ctx) {
        Ok(spec) => {
            let _ = writeln!(out, "{}", summary_line(&shown, &spec));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                let _ = writeln!(out, "{}", e.render(&shown));
            }
            ExitCode::from(1)
        }
    }
}

/// Reads at most `max + 1` bytes, enough to tell that a file is too big
/// without reading all of a huge one.
fn read_capped(path: &Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(max as u64 + 1).read_to_end(&mut buf)?;
    Ok(buf)
}
