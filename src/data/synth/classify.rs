//! Error classification of a response on a synthetic item, for evaluation.
//!
//! # The rule
//!
//! 1. **Caption.** The caption is the content of the first `<caption>…</caption>` block (taken
//!    from the §1.2 full match when the response is format-valid, else from the first such block
//!    anywhere). No caption block ⇒ **perception** error (the response grounded nothing).
//! 2. **Mentions.** The caption is cut into clauses at line breaks and semicolons (bullet dashes
//!    and a leading "Shapes:" are ignored). A clause that names a shape (circle, square, triangle,
//!    star, diamond, singular or plural) is one object mention. From the clause we read, when
//!    present: the first colour word (grey = gray), the first size word (big = large,
//!    little = small), a cell name ("top left" … "center" … "bottom right"), a digit after
//!    "digit", "number" or "showing", and a quoted word. A clause without a shape word that says
//!    "N objects" or "N shapes" is a count claim.
//! 3. **Match.** A mention fits an object when every attribute the mention states equals the
//!    object's (unstated attributes are not checked; a stated text on an object without text does
//!    not fit). The caption states the scene correctly iff every count claim equals the number of
//!    objects and there is a one-to-one assignment of mentions to objects in which every mention
//!    fits its object, covering every object: so a hallucinated, misdescribed, misplaced or
//!    missed object is a perception error, and so is a caption that lists objects only in part.
//! 4. **Verdict.** Caption wrong ⇒ perception; caption right and `answer_correct == false` ⇒
//!    reasoning; otherwise none. Answer matching belongs to the reward module; its verdict comes in
//!    as `answer_correct`.

use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

use super::demo::ErrorLabel;
use super::scene::{Cell, Colour, Label, Object, Scene, Shape, Size};

/// The classifier's decision and the reasons behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub label: ErrorLabel,
    /// Whether a caption block was found.
    pub caption_found: bool,
    /// Human-readable reasons the caption was judged wrong (empty when it was right).
    pub problems: Vec<String>,
}

/// What one clause of a caption says about one object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mention {
    pub shape: Option<Shape>,
    pub colour: Option<Colour>,
    pub size: Option<Size>,
    pub cell: Option<Cell>,
    pub label: Option<Label>,
    /// The clause as written (for messages).
    pub clause: String,
}

impl Mention {
    /// Whether every attribute this mention states agrees with `o`.
    pub fn fits(&self, o: &Object) -> bool {
        self.shape.is_none_or(|s| s == o.shape)
            && self.colour.is_none_or(|c| c == o.colour)
            && self.size.is_none_or(|z| z == o.size)
            && self.cell.is_none_or(|c| c == o.cell)
            && self
                .label
                .as_ref()
                .is_none_or(|l| o.label.as_ref() == Some(l))
    }
}

/// A parsed caption: object mentions and count claims.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedCaption {
    pub mentions: Vec<Mention>,
    pub count_claims: Vec<usize>,
}

struct Patterns {
    valid: Regex,
    loose: Regex,
    shape: Regex,
    colour: Regex,
    size: Regex,
    cell: Regex,
    digit: Regex,
    word: Regex,
    count: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| {
        let re = |s: &str| Regex::new(s).expect("classifier regexes are valid");
        let mut cells: Vec<&str> = Cell::all().map(Cell::name).collect();
        cells.sort_by_key(|c| std::cmp::Reverse(c.len()));
        Patterns {
            valid: re(
                r"(?s)^\s*<caption>(.*?)</caption>\s*<think>.*?</think>\s*<answer>.*?</answer>\s*$",
            ),
            loose: re(r"(?s)<caption>(.*?)</caption>"),
            shape: re(r"\b(circle|square|triangle|star|diamond)s?\b"),
            colour: re(r"\b(red|orange|yellow|green|blue|purple|gray|grey)\b"),
            size: re(r"\b(small|large|big|little)\b"),
            cell: re(&format!(r"\b({})\b", cells.join("|"))),
            digit: re(r"\b(?:digit|number|showing)\s+(\d)\b"),
            word: re(r#""([a-z]+)""#),
            count: re(r"\b(\d+)\s+(?:objects?|shapes?)\b"),
        }
    })
}

/// The caption's content (without tags), per rule 1.
pub fn extract_caption(response: &str) -> Option<&str> {
    let p = patterns();
    p.valid
        .captures(response)
        .or_else(|| p.loose.captures(response))
        .and_then(|c| c.get(1))
        .map(|m| m.as_str())
}

/// Parses caption content into mentions and count claims, per rule 2.
pub fn parse_caption(caption: &str) -> ParsedCaption {
    let p = patterns();
    let mut out = ParsedCaption::default();
    for raw in caption.split(['\n', ';']) {
        let clause = raw.trim().trim_start_matches(['-', '*', '•']).trim();
        let lower = clause.to_lowercase();
        let lower = lower.strip_prefix("shapes:").unwrap_or(&lower).trim();
        if lower.is_empty() {
            continue;
        }
        let Some(shape) = p.shape.captures(lower) else {
            if let Some(c) = p.count.captures(lower)
                && let Ok(n) = c[1].parse()
            {
                out.count_claims.push(n);
            }
            continue;
        };
        let colour = p.colour.captures(lower).and_then(|c| match &c[1] {
            "grey" => Some(Colour::Gray),
            w => Colour::parse(w),
        });
        let size = p.size.captures(lower).and_then(|c| match &c[1] {
            "big" => Some(Size::Large),
            "little" => Some(Size::Small),
            w => Size::parse(w),
        });
        let label = if let Some(c) = p.digit.captures(lower) {
            c[1].parse().ok().map(Label::Digit)
        } else {
            p.word
                .captures(lower)
                .map(|c| Label::Word(c[1].to_string()))
        };
        out.mentions.push(Mention {
            shape: Shape::parse(&shape[1]),
            colour,
            size,
            cell: p.cell.captures(lower).and_then(|c| Cell::parse(&c[1])),
            label,
            clause: clause.to_string(),
        });
    }
    out
}

/// Finds a one-to-one assignment of mentions to objects where every mention fits (augmenting
/// paths; at most nine objects). Returns, per mention, the object index or `None`.
fn assign(mentions: &[Mention], objects: &[Object]) -> Vec<Option<usize>> {
    fn augment(
        m: usize,
        mentions: &[Mention],
        objects: &[Object],
        owner: &mut [Option<usize>],
        seen: &mut [bool],
    ) -> bool {
        for (j, o) in objects.iter().enumerate() {
            if seen[j] || !mentions[m].fits(o) {
                continue;
            }
            seen[j] = true;
            if owner[j].is_none_or(|other| augment(other, mentions, objects, owner, seen)) {
                owner[j] = Some(m);
                return true;
            }
        }
        false
    }
    let mut owner: Vec<Option<usize>> = vec![None; objects.len()];
    for m in 0..mentions.len() {
        let mut seen = vec![false; objects.len()];
        augment(m, mentions, objects, &mut owner, &mut seen);
    }
    let mut of_mention = vec![None; mentions.len()];
    for (j, m) in owner.iter().enumerate() {
        if let Some(m) = m {
            of_mention[*m] = Some(j);
        }
    }
    of_mention
}

/// Checks parsed caption content against `scene` (rule 3); returns the problems found.
pub fn caption_problems(parsed: &ParsedCaption, scene: &Scene) -> Vec<String> {
    let mut problems = Vec::new();
    let n = scene.objects.len();
    for &c in &parsed.count_claims {
        if c != n {
            problems.push(format!("caption claims {c} objects, the scene has {n}"));
        }
    }
    let assignment = assign(&parsed.mentions, &scene.objects);
    for (m, a) in parsed.mentions.iter().zip(&assignment) {
        if a.is_none() {
            problems.push(format!("\"{}\" fits no object of the scene", m.clause));
        }
    }
    let mut covered = vec![false; n];
    for j in assignment.iter().flatten() {
        covered[*j] = true;
    }
    for (o, c) in scene.objects.iter().zip(&covered) {
        if !c {
            problems.push(format!(
                "the {} in the {} cell is not described",
                o.describe(),
                o.cell
            ));
        }
    }
    problems
}

/// Classifies a response on an item whose scene is `scene`, given the reward module's verdict on
/// the answer.
pub fn classify_response(scene: &Scene, response: &str, answer_correct: bool) -> Verdict {
    let Some(caption) = extract_caption(response) else {
        return Verdict {
            label: ErrorLabel::Perception,
            caption_found: false,
            problems: vec!["no <caption> block".to_string()],
        };
    };
    let problems = caption_problems(&parse_caption(caption), scene);
    let label = if !problems.is_empty() {
        ErrorLabel::Perception
    } else if !answer_correct {
        ErrorLabel::Reasoning
    } else {
        ErrorLabel::None
    };
    Verdict {
        label,
        caption_found: true,
        problems,
    }
}

/// [`classify_response`] for a row of the RL parquet: reads the scene from its `scene` column.
/// Fails, with a reason, when the row has no scene or the scene does not parse.
pub fn classify_rl_record(
    record: &crate::data::rl_parquet::RlRecord,
    response: &str,
    answer_correct: bool,
) -> Result<Verdict, String> {
    let text = record
        .scene
        .as_deref()
        .ok_or("the row has no `scene` (not a synthetic item)")?;
    let scene = Scene::from_json(text).map_err(|e| format!("`scene`: {e}"))?;
    Ok(classify_response(&scene, response, answer_correct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scene() -> Scene {
        Scene {
            objects: vec![
                Object {
                    shape: Shape::Circle,
                    colour: Colour::Red,
                    size: Size::Large,
                    cell: Cell { row: 0, col: 0 },
                    label: Some(Label::Digit(7)),
                    offset: (0, 0),
                },
                Object {
                    shape: Shape::Circle,
                    colour: Colour::Red,
                    size: Size::Small,
                    cell: Cell { row: 1, col: 1 },
                    label: None,
                    offset: (0, 0),
                },
            ],
        }
    }

    fn resp(caption: &str) -> String {
        format!("<caption>{caption}</caption><think>x</think><answer>1</answer>")
    }

    #[test]
    fn correct_free_wording_is_accepted() {
        let r = resp(
            "- A big red circle at the top left with the number 7\n- a little red circle in the center",
        );
        let v = classify_response(&scene(), &r, true);
        assert_eq!(v.label, ErrorLabel::None, "{:?}", v.problems);
        let v = classify_response(&scene(), &r, false);
        assert_eq!(v.label, ErrorLabel::Reasoning);
    }

    #[test]
    fn ambiguous_mentions_need_a_perfect_assignment() {
        // The first mention fits both objects; the second only the first. Greedy would fail.
        let r = resp("red circle; red circle at top left showing 7");
        assert_eq!(
            classify_response(&scene(), &r, true).label,
            ErrorLabel::None
        );
    }

    #[test]
    fn each_kind_of_misstatement_is_perception() {
        for bad in [
            "red circle at top left showing 7", // missed
            "red circle at top left showing 7; red circle at center; blue star", // extra
            "blue circle at top left showing 7; red circle at center", // colour
            "red square at top left showing 7; red circle at center", // shape
            "red circle at top right showing 7; red circle at center", // cell
            "red circle at top left showing 1; red circle at center", // text
            "red circle at top left showing 7; red circle at center showing \"cat\"", // text
            "3 objects\n- red circle at top left\n- red circle at center", // count
        ] {
            let v = classify_response(&scene(), &resp(bad), true);
            assert_eq!(v.label, ErrorLabel::Perception, "{bad}");
            assert!(!v.problems.is_empty());
        }
        // A format-invalid response still has its caption read (first block anywhere).
        let r = "thinking... <caption>red circle at top left showing 7; red circle at center</caption> 3";
        let v = classify_response(&scene(), r, false);
        assert_eq!(v.label, ErrorLabel::Reasoning, "{:?}", v.problems);
        let v = classify_response(&scene(), "no blocks at all", true);
        assert_eq!(v.label, ErrorLabel::Perception);
        assert!(!v.caption_found);
    }
}
