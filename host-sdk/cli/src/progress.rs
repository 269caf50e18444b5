//! Progress bars (indicatif) per node and per step, or plain lines.

use std::collections::HashMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use node_abi::LogLevel;
use node_host::Event;

pub struct Progress {
    plain: bool,
    multi: MultiProgress,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    overall: Option<ProgressBar>,
    steps: HashMap<String, ProgressBar>,
}

impl Progress {
    pub fn new(plain: bool) -> Self {
        let plain = plain || !std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = MultiProgress::with_draw_target(if plain {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        });
        Self {
            plain,
            multi,
            state: Mutex::new(State::default()),
        }
    }

    fn line(&self, text: String) {
        if self.plain {
            eprintln!("{text}");
        } else {
            let _ = self.multi.println(text);
        }
    }

    pub fn event(&self, e: Event) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match e {
            Event::Plan { order } => {
                if !self.plain {
                    let bar = self.multi.add(ProgressBar::new(order.len() as u64));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30}] {pos}/{len} nodes {msg}",
                        )
                        .unwrap()
                        .progress_chars("=> "),
                    );
                    bar.set_prefix("graph");
                    st.overall = Some(bar);
                } else {
                    self.line(format!("plan: {}", order.join(" -> ")));
                }
            }
            Event::NodeStarted { node, class_type } => {
                if let Some(b) = &st.overall {
                    b.set_message(format!("{node} {class_type}"));
                }
                self.line(format!("[{node}] {class_type} started"));
            }
            Event::NodeCached { node, class_type } => {
                if let Some(b) = &st.overall {
                    b.inc(1);
                }
                self.line(format!("[{node}] {class_type} cached"));
            }
            Event::Progress {
                node,
                step,
                total,
                message,
            } => {
                if self.plain {
                    eprintln!("[{node}] {step}/{total} {message}");
                    return;
                }
                let bar = st.steps.entry(node.clone()).or_insert_with(|| {
                    let b = self.multi.add(ProgressBar::new(total.max(1)));
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:>8} [{bar:30}] {pos}/{len} {msg} ({elapsed}, eta {eta})",
                        )
                        .unwrap()
                        .progress_chars("=> "),
                    );
                    b.set_prefix(format!("node {node}"));
                    b
                });
                bar.set_length(total.max(1));
                bar.set_position(step);
                bar.set_message(message);
            }
            Event::Log {
                node,
                level,
                message,
            } => {
                let tag = match level {
                    LogLevel::Debug => "debug",
                    LogLevel::Info => "info",
                    LogLevel::Warn => "warning",
                    LogLevel::Error => "error",
                };
                if level >= LogLevel::Info {
                    self.line(format!("[{node}] {tag}: {message}"));
                }
            }
            Event::NodeFinished {
                node,
                class_type,
                elapsed,
            } => {
                if let Some(b) = st.steps.remove(&node) {
                    b.finish_and_clear();
                }
                if let Some(b) = &st.overall {
                    b.inc(1);
                }
                self.line(format!(
                    "[{node}] {class_type} finished in {:.2} s",
                    elapsed.as_secs_f64()
                ));
            }
        }
    }

    pub fn finish(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (_, b) in st.steps.drain() {
            b.finish_and_clear();
        }
        if let Some(b) = st.overall.take() {
            b.finish_and_clear();
        }
    }
}
