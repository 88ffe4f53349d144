//! The demo's terminal output: a bar per wave, redrawn in place on a
//! terminal, and events (failures, retries, approvals) as lines above it.
//! Without a terminal every change is a plain line.

use std::io::Write;

use crate::engine::RolloutView;

const BAR: usize = 30;

/// One wave's line, e.g. `canary  [██████░░░░]   4/6 steps  running`.
pub fn wave_line(name: &str, state: &str, done: usize, failed: usize, total: usize) -> String {
    let filled = (done * BAR).checked_div(total).unwrap_or(0).min(BAR);
    let broken = ((failed * BAR).checked_div(total).unwrap_or(0))
        .max(usize::from(failed > 0))
        .min(BAR - filled);
    format!(
        "  {name:<10} [{}{}{}] {done:>5}/{total:<5} steps  {state}{}",
        "█".repeat(filled),
        "✗".repeat(broken),
        "░".repeat(BAR - filled - broken),
        if failed > 0 {
            format!(" ({failed} failed)")
        } else {
            String::new()
        }
    )
}

/// Each wave's line, with a key that changes only with the wave's state,
/// its failures or each further quarter done (what plain output prints on).
pub fn wave_lines(view: &RolloutView) -> Vec<(String, String)> {
    view.waves
        .iter()
        .map(|w| {
            let done = w.counts.succeeded + w.counts.skipped;
            let quarter = (done * 4).checked_div(w.counts.total).unwrap_or(0);
            (
                wave_line(
                    w.name.as_str(),
                    &w.state,
                    done,
                    w.counts.failed,
                    w.counts.total,
                ),
                format!("{}:{}:{quarter}:{}", w.name, w.state, w.counts.failed),
            )
        })
        .collect()
}

pub struct Screen {
    tty: bool,
    /// Lines of the live block drawn last (TTY only).
    drawn: usize,
    last: Vec<String>,
    last_keys: Vec<String>,
}

impl Screen {
    pub fn new(tty: bool) -> Screen {
        Screen {
            tty,
            drawn: 0,
            last: Vec::new(),
            last_keys: Vec::new(),
        }
    }

    fn out(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
    }

    fn clear_block(&mut self) -> String {
        let s = if self.tty && self.drawn > 0 {
            format!("\x1b[{}A\x1b[J", self.drawn)
        } else {
            String::new()
        };
        self.drawn = 0;
        s
    }

    /// An event line, printed above the live block.
    pub fn event(&mut self, line: &str) {
        let mut s = self.clear_block();
        s.push_str(line);
        s.push('\n');
        if self.tty {
            for l in &self.last {
                s.push_str(l);
                s.push('\n');
            }
            self.drawn = self.last.len();
        }
        self.out(&s);
    }

    /// The live block: redrawn in place on a terminal; otherwise each line
    /// whose key changed is printed.
    pub fn block(&mut self, entries: Vec<(String, String)>) {
        let (lines, keys): (Vec<String>, Vec<String>) = entries.into_iter().unzip();
        if self.tty {
            if lines == self.last {
                return;
            }
            let mut s = self.clear_block();
            for l in &lines {
                s.push_str(l);
                s.push('\n');
            }
            self.drawn = lines.len();
            self.out(&s);
        } else {
            let mut s = String::new();
            for (i, l) in lines.iter().enumerate() {
                if self.last_keys.get(i) != Some(&keys[i]) {
                    s.push_str(l);
                    s.push('\n');
                }
            }
            if !s.is_empty() {
                self.out(&s);
            }
        }
        self.last = lines;
        self.last_keys = keys;
    }

    /// Ends the live block: later output goes below it.
    pub fn finish(&mut self) {
        self.drawn = 0;
        self.last.clear();
        self.last_keys.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_with_progress_and_show_failures() {
        let l = wave_line("rest", "running", 5, 1, 10);
        assert!(l.contains(&"█".repeat(15)), "{l}");
        assert!(l.contains('✗') && l.contains("(1 failed)"), "{l}");
        assert!(wave_line("x", "pending", 0, 0, 0).contains(&"░".repeat(BAR)));
    }
}
