//! Demonstrations in the three-block format, from two sources, and the system instruction.
//!
//! - The **teacher** knows the scene exactly: a dense caption (object count, then every object
//!   with its cell, size, colour, shape and text) and the solver's full step-by-step trace. It is
//!   the black-box teacher of the embedded default: only its text is ever used.
//! - The **public** source stands for a broad, noisier SFT mixture: a one-line caption (no sizes,
//!   no count), only the last reasoning steps, and, at configured rates, a perception mistake
//!   (wrong colour, wrong shape, wrong cell, misread text, missed object) or a reasoning mistake
//!   (a [`Slip`]). Each mistake propagates to the answer when the question depends on it: the
//!   caption, the reasoning and the answer all follow the mis-perceived scene.
//!
//! Every demonstration carries its [`ErrorLabel`]. The wording here is our own.

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::question::{Question, Slip, solve};
use super::scene::{Cell, Colour, Label, Object, Scene, Shape, WORDS};

/// The system instruction asking for the three-block response format. The one place it lives:
/// SFT files, RL prompts and the discriminator inputs all use this text.
pub const SYSTEM_INSTRUCTION: &str = "You will see an image and a question about it. \
Reply in exactly three blocks and nothing else. \
First <caption>...</caption>: list what the image shows, one object per line, giving its grid \
cell, size, colour, shape and any text written on it. \
Then <think>...</think>: work out the answer step by step from what you listed. \
Last <answer>...</answer>: only the final answer, as a number, a single word or a cell name.";

/// The user turn for a question: one image placeholder, then the question.
pub fn user_prompt(question: &str) -> String {
    format!("<image>\n{question}")
}

/// What went wrong in a demonstration (or in a policy response, see `classify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorLabel {
    /// The caption states the scene correctly and the answer is right.
    None,
    /// The caption misstates the scene.
    Perception,
    /// The caption is right but the answer is wrong.
    Reasoning,
}

impl ErrorLabel {
    /// "none", "perception", "reasoning".
    pub fn name(self) -> &'static str {
        match self {
            ErrorLabel::None => "none",
            ErrorLabel::Perception => "perception",
            ErrorLabel::Reasoning => "reasoning",
        }
    }
}

/// The specific mistake injected into a public demonstration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mistake {
    WrongColour { cell: Cell, seen: Colour },
    WrongShape { cell: Cell, seen: Shape },
    WrongCell { cell: Cell, seen: Cell },
    MisreadText { cell: Cell, seen: String },
    MissedObject { cell: Cell },
    ReasoningSlip,
}

/// One demonstration, split into the two segments the discriminators score.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demo {
    /// `<caption>…</caption>`, tags included.
    pub caption: String,
    /// `<think>…</think>\n<answer>…</answer>`, tags included (the reasoning segment of §3.1).
    pub cot: String,
    /// The final answer as written in the `<answer>` block.
    pub answer: String,
    pub label: ErrorLabel,
    pub mistake: Option<Mistake>,
}

impl Demo {
    /// The whole response: caption, newline, reasoning segment.
    pub fn response(&self) -> String {
        format!("{}\n{}", self.caption, self.cot)
    }
}

/// Error rates of the public source. Their sum must not exceed 1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PublicNoise {
    /// Fraction of demonstrations with a perception mistake.
    pub perception_error_rate: f64,
    /// Fraction of demonstrations with a correct caption but a reasoning mistake.
    pub reasoning_error_rate: f64,
}

impl Default for PublicNoise {
    fn default() -> Self {
        PublicNoise {
            perception_error_rate: 0.2,
            reasoning_error_rate: 0.2,
        }
    }
}

impl PublicNoise {
    /// Checks that both rates are in [0, 1] and sum to at most 1.
    pub fn validate(&self) -> Result<(), String> {
        let (p, r) = (self.perception_error_rate, self.reasoning_error_rate);
        for (name, v) in [
            ("public perception error rate", p),
            ("public reasoning error rate", r),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        if p + r > 1.0 + 1e-12 {
            return Err(format!(
                "public perception and reasoning error rates sum to {}, more than 1",
                p + r
            ));
        }
        Ok(())
    }
}

fn label_phrase_dense(label: &Label) -> String {
    match label {
        Label::Digit(d) => format!(" with the digit {d}"),
        Label::Word(w) => format!(" with the word \"{w}\""),
    }
}

fn label_phrase_sparse(label: &Label) -> String {
    match label {
        Label::Digit(d) => format!(" showing {d}"),
        Label::Word(w) => format!(" showing \"{w}\""),
    }
}

/// The teacher's dense caption of `scene`.
pub fn dense_caption(scene: &Scene) -> String {
    let n = scene.objects.len();
    let mut out = format!(
        "<caption>\n- {n} {} on a 3x3 grid.\n",
        if n == 1 { "object" } else { "objects" }
    );
    for o in &scene.objects {
        let label = o.label.as_ref().map(label_phrase_dense).unwrap_or_default();
        out.push_str(&format!(
            "- {}: {} {} {}{label}\n",
            o.cell.name(),
            o.size,
            o.colour,
            o.shape
        ));
    }
    out.push_str("</caption>");
    out
}

/// The public source's sparse caption: colour, shape, cell and text; no sizes, no count.
pub fn sparse_caption(scene: &Scene) -> String {
    let parts: Vec<String> = scene
        .objects
        .iter()
        .map(|o| {
            let label = o
                .label
                .as_ref()
                .map(label_phrase_sparse)
                .unwrap_or_default();
            format!("{} {} at {}{label}", o.colour, o.shape, o.cell.name())
        })
        .collect();
    if parts.is_empty() {
        "<caption>Shapes: none.</caption>".to_string()
    } else {
        format!("<caption>Shapes: {}.</caption>", parts.join("; "))
    }
}

fn cot_block(think: &str, answer: &str) -> String {
    format!("<think>\n{think}\n</think>\n<answer>{answer}</answer>")
}

/// The teacher's demonstration. `None` if the question does not fit the scene (never for items
/// produced by the generator).
pub fn teacher_demo(question: &Question, scene: &Scene) -> Option<Demo> {
    let sol = solve(question, scene, None)?;
    Some(Demo {
        caption: dense_caption(scene),
        cot: cot_block(&sol.steps.join("\n"), &sol.answer),
        answer: sol.answer,
        label: ErrorLabel::None,
        mistake: None,
    })
}

/// Perturbs one object of `scene` the way a weak perceiver might. Returns the mis-perceived scene
/// and the mistake, or `None` for an empty scene.
fn perturb<R: RngExt + ?Sized>(rng: &mut R, scene: &Scene) -> Option<(Scene, Mistake)> {
    if scene.objects.is_empty() {
        return None;
    }
    let i = rng.random_range(0..scene.objects.len());
    let mut seen = scene.clone();
    let o: &mut Object = &mut seen.objects[i];
    let cell = o.cell;
    let mistake = match rng.random_range(0..5u8) {
        0 => {
            let others: Vec<Colour> = Colour::ALL
                .iter()
                .copied()
                .filter(|c| *c != o.colour)
                .collect();
            o.colour = others[rng.random_range(0..others.len())];
            Mistake::WrongColour {
                cell,
                seen: o.colour,
            }
        }
        1 => {
            let others: Vec<Shape> = Shape::ALL
                .iter()
                .copied()
                .filter(|s| *s != o.shape)
                .collect();
            o.shape = others[rng.random_range(0..others.len())];
            Mistake::WrongShape {
                cell,
                seen: o.shape,
            }
        }
        2 => {
            let empty = scene.empty_cells();
            if empty.is_empty() {
                return None;
            }
            o.cell = empty[rng.random_range(0..empty.len())];
            let to = o.cell;
            seen.sort();
            Mistake::WrongCell { cell, seen: to }
        }
        3 => {
            let label = o.label.as_ref()?;
            let wrong = match label {
                Label::Digit(d) => Label::Digit((d + rng.random_range(1..10u8)) % 10),
                Label::Word(w) => {
                    let pool: Vec<&&str> = WORDS.iter().filter(|x| **x != w).collect();
                    Label::Word(pool[rng.random_range(0..pool.len())].to_string())
                }
            };
            let text = wrong.text();
            o.label = Some(wrong);
            Mistake::MisreadText { cell, seen: text }
        }
        _ => {
            seen.objects.remove(i);
            Mistake::MissedObject { cell }
        }
    };
    Some((seen, mistake))
}

/// How many perturbations to try for one that changes the answer.
const PERTURB_TRIES: usize = 64;

fn sparse_cot(steps: &[String], answer: &str) -> String {
    let keep = steps.len().saturating_sub(2);
    cot_block(&steps[keep..].join(" "), answer)
}

/// A public-source demonstration of `question` on `scene`, drawing its mistakes from `rng`.
/// `None` only if the question does not fit the scene.
pub fn public_demo<R: RngExt + ?Sized>(
    rng: &mut R,
    question: &Question,
    scene: &Scene,
    noise: PublicNoise,
) -> Option<Demo> {
    let truth = solve(question, scene, None)?;
    let u: f64 = rng.random();
    if u < noise.perception_error_rate {
        // Look for a mistake that changes the answer; if none does (the question ignores every
        // object we could get wrong), keep one that does not: the caption is still wrong.
        let mut fallback = None;
        for _ in 0..PERTURB_TRIES {
            let Some((seen, mistake)) = perturb(rng, scene) else {
                continue;
            };
            let Some(sol) = solve(question, &seen, None) else {
                continue;
            };
            let changed = sol.answer != truth.answer;
            let demo = Demo {
                caption: sparse_caption(&seen),
                cot: sparse_cot(&sol.steps, &sol.answer),
                answer: sol.answer,
                label: ErrorLabel::Perception,
                mistake: Some(mistake),
            };
            if changed {
                return Some(demo);
            }
            fallback.get_or_insert(demo);
        }
        if let Some(demo) = fallback {
            return Some(demo);
        }
    } else if u < noise.perception_error_rate + noise.reasoning_error_rate {
        let sol = solve(question, scene, Some(Slip { seed: rng.random() }))?;
        return Some(Demo {
            caption: sparse_caption(scene),
            cot: sparse_cot(&sol.steps, &sol.answer),
            answer: sol.answer,
            label: ErrorLabel::Reasoning,
            mistake: Some(Mistake::ReasoningSlip),
        });
    }
    Some(Demo {
        caption: sparse_caption(scene),
        cot: sparse_cot(&truth.steps, &truth.answer),
        answer: truth.answer,
        label: ErrorLabel::None,
        mistake: None,
    })
}
