//! Question families, their wording, and a solver that reasons step by step over a scene.
//!
//! Level 1 needs perception only (count, attribute at a cell, position, reading a label); level 2
//! adds one reasoning step (sum, difference or comparison of counts, sum of digits); level 3
//! chains several (count arithmetic, digit × count, sum of the digits in a row).
//!
//! The solver is the single source of answers: the ground truth is `solve(q, true scene)`, the
//! teacher's reasoning is its trace, and the noisy public source calls it on a mis-perceived
//! scene (a perception error) or with a [`Slip`] (a reasoning error). Answers are canonical
//! strings: integers in decimal, "yes"/"no", and the vocabulary words of `scene`; none contains
//! a comma (the rule-based judge would split it into several values).

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::scene::{COL_NAMES, Cell, Colour, Filter, Label, ROW_NAMES, Scene, Shape, Size};

/// Which attribute an attribute question asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attribute {
    Colour,
    Shape,
    Size,
}

/// A grid row or column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Line {
    Row(u8),
    Column(u8),
}

impl Line {
    fn contains(self, c: Cell) -> bool {
        match self {
            Line::Row(r) => c.row == r,
            Line::Column(k) => c.col == k,
        }
    }

    fn phrase(self) -> String {
        match self {
            Line::Row(r) => format!("the {} row", ROW_NAMES[usize::from(r.min(2))]),
            Line::Column(k) => format!("the {} column", COL_NAMES[usize::from(k.min(2))]),
        }
    }
}

/// One question, with its parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Question {
    // Level 1: perception.
    Count {
        filter: Filter,
    },
    AttributeAt {
        cell: Cell,
        attribute: Attribute,
    },
    PositionOf {
        colour: Colour,
        shape: Shape,
    },
    ReadLabel {
        colour: Colour,
        shape: Shape,
    },
    // Level 2: one reasoning step.
    CountSum {
        a: Filter,
        b: Filter,
    },
    CountDiff {
        a: Filter,
        b: Filter,
    },
    CountCompare {
        a: Filter,
        b: Filter,
    },
    DigitSum,
    // Level 3: several steps.
    CountCombo {
        a: Filter,
        b: Filter,
        c: Filter,
    },
    DigitTimesCount {
        colour: Colour,
        shape: Shape,
        filter: Filter,
    },
    LineDigitSum {
        line: Line,
    },
}

impl Question {
    /// The family name (the serde tag), for metadata and reports.
    pub fn family(&self) -> &'static str {
        match self {
            Question::Count { .. } => "count",
            Question::AttributeAt { .. } => "attribute_at",
            Question::PositionOf { .. } => "position_of",
            Question::ReadLabel { .. } => "read_label",
            Question::CountSum { .. } => "count_sum",
            Question::CountDiff { .. } => "count_diff",
            Question::CountCompare { .. } => "count_compare",
            Question::DigitSum => "digit_sum",
            Question::CountCombo { .. } => "count_combo",
            Question::DigitTimesCount { .. } => "digit_times_count",
            Question::LineDigitSum { .. } => "line_digit_sum",
        }
    }

    /// The question as asked in the prompt.
    pub fn text(&self) -> String {
        match *self {
            Question::Count { filter } => format!("How many {} are there?", filter.phrase()),
            Question::AttributeAt { cell, attribute } => {
                let what = match attribute {
                    Attribute::Colour => "colour",
                    Attribute::Shape => "shape",
                    Attribute::Size => "size (small or large)",
                };
                format!("What is the {what} of the object in the {cell} cell?")
            }
            Question::PositionOf { colour, shape } => format!(
                "In which cell of the 3x3 grid is the {colour} {shape}? \
                 Answer with a cell name such as \"top left\" or \"center\"."
            ),
            Question::ReadLabel { colour, shape } => {
                format!("What is written on the {colour} {shape}?")
            }
            Question::CountSum { a, b } => format!(
                "How many {} and {} are there in total?",
                a.phrase(),
                b.phrase()
            ),
            Question::CountDiff { a, b } => format!(
                "How many more {} than {} are there?",
                a.phrase(),
                b.phrase()
            ),
            Question::CountCompare { a, b } => format!(
                "Are there more {} than {}? Answer yes or no.",
                a.phrase(),
                b.phrase()
            ),
            Question::DigitSum => "What is the sum of all the digits shown in the image?".into(),
            Question::CountCombo { a, b, c } => format!(
                "Add the number of {} to the number of {}, then subtract the number of {}. \
                 What is the result?",
                a.phrase(),
                b.phrase(),
                c.phrase()
            ),
            Question::DigitTimesCount {
                colour,
                shape,
                filter,
            } => format!(
                "Multiply the digit on the {colour} {shape} by the number of {}. \
                 What is the product?",
                filter.phrase()
            ),
            Question::LineDigitSum { line } => {
                format!("What is the sum of the digits in {}?", line.phrase())
            }
        }
    }

    /// Difficulty level (1..=3) of the family.
    pub fn level(&self) -> u8 {
        match self {
            Question::Count { .. }
            | Question::AttributeAt { .. }
            | Question::PositionOf { .. }
            | Question::ReadLabel { .. } => 1,
            Question::CountSum { .. }
            | Question::CountDiff { .. }
            | Question::CountCompare { .. }
            | Question::DigitSum => 2,
            Question::CountCombo { .. }
            | Question::DigitTimesCount { .. }
            | Question::LineDigitSum { .. } => 3,
        }
    }
}

/// A reasoning trace: the steps as sentences and the final answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Solution {
    pub steps: Vec<String>,
    pub answer: String,
}

/// A deliberate reasoning mistake: the solver makes one wrong step (an arithmetic slip, a flipped
/// comparison, the wrong object looked up) and carries it to the final answer, which then always
/// differs from the correct one on the same scene.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slip {
    /// Random bits that pick the direction and kind of the mistake.
    pub seed: u64,
}

impl Slip {
    /// ±1, chosen by the seed, never producing a negative count when `floor_zero`.
    fn nudge(self, v: i64, floor_zero: bool) -> i64 {
        if self.seed & 1 == 0 || (floor_zero && v == 0) {
            v + 1
        } else {
            v - 1
        }
    }
}

fn list_cells<'a>(objs: impl Iterator<Item = &'a super::scene::Object>) -> String {
    let names: Vec<&str> = objs.map(|o| o.cell.name()).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

fn count_step(scene: &Scene, f: Filter) -> (i64, String) {
    let n = scene.count(f) as i64;
    let cells = list_cells(scene.objects.iter().filter(|o| f.matches(o)));
    (
        n,
        format!("{} found at: {cells}, so there are {n}.", f.phrase()),
    )
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

/// Solves `q` on `scene`. Returns `None` when the scene does not support the question (an object
/// it names is missing or ambiguous, a digit it needs is absent). With `slip`, the final answer
/// is wrong by construction.
pub fn solve(q: &Question, scene: &Scene, slip: Option<Slip>) -> Option<Solution> {
    let mut steps = Vec::new();
    let answer = match *q {
        Question::Count { filter } => {
            let (n, s) = count_step(scene, filter);
            steps.push(capitalise(&s));
            match slip {
                Some(sl) => {
                    let wrong = sl.nudge(n, true);
                    steps.push(format!("Counting again gives {wrong}."));
                    wrong.to_string()
                }
                None => n.to_string(),
            }
        }
        Question::AttributeAt { cell, attribute } => {
            let o = scene.at(cell)?;
            let picked = match slip {
                // Read the row of a different object: the nearest other object in reading order.
                Some(sl) => {
                    let value = |x: &super::scene::Object| attr_value(x, attribute);
                    let others: Vec<_> = scene
                        .objects
                        .iter()
                        .filter(|x| x.cell != cell && value(x) != value(o))
                        .collect();
                    if others.is_empty() {
                        None
                    } else {
                        Some(others[(sl.seed as usize >> 1) % others.len()])
                    }
                }
                None => Some(o),
            };
            match picked {
                Some(p) => {
                    steps.push(format!(
                        "The object in the {cell} cell is the {}.",
                        p.describe()
                    ));
                    let v = attr_value(p, attribute);
                    steps.push(format!("Its {} is {v}.", attr_name(attribute)));
                    v
                }
                None => {
                    // No other object differs: misstate the attribute itself.
                    let v = attr_value(o, attribute);
                    let wrong = other_attr_value(&v, attribute, slip?.seed);
                    steps.push(format!(
                        "The object in the {cell} cell is the {}.",
                        o.describe()
                    ));
                    steps.push(format!("So its {} is {wrong}.", attr_name(attribute)));
                    wrong
                }
            }
        }
        Question::PositionOf { colour, shape } => {
            let o = scene.unique(colour, shape)?;
            let mut cell = o.cell;
            if let Some(sl) = slip {
                // Mix up rows and columns, or step one cell off when that is the same cell.
                cell = if cell.row != cell.col {
                    Cell {
                        row: cell.col,
                        col: cell.row,
                    }
                } else {
                    Cell {
                        row: cell.row,
                        col: (cell.col + 1 + (sl.seed as u8 & 1)) % 3,
                    }
                };
            }
            steps.push(format!(
                "The {colour} {shape} is in the {} row and the {} column.",
                ROW_NAMES[usize::from(cell.row)],
                COL_NAMES[usize::from(cell.col)]
            ));
            steps.push(format!("That cell is called {}.", cell.name()));
            cell.name().to_string()
        }
        Question::ReadLabel { colour, shape } => {
            let o = scene.unique(colour, shape)?;
            let label = o.label.as_ref()?;
            let read = match slip {
                Some(sl) => wrong_label(label, scene, sl),
                None => label.text(),
            };
            steps.push(format!(
                "The {colour} {shape} is in the {} cell.",
                o.cell.name()
            ));
            steps.push(format!("The text on it reads {read}."));
            read
        }
        Question::CountSum { a, b } => {
            let (na, sa) = count_step(scene, a);
            let (nb, sb) = count_step(scene, b);
            steps.push(capitalise(&sa));
            steps.push(capitalise(&sb));
            let total = slip.map_or(na + nb, |s| s.nudge(na + nb, true));
            steps.push(format!("{na} + {nb} = {total}."));
            total.to_string()
        }
        Question::CountDiff { a, b } => {
            let (na, sa) = count_step(scene, a);
            let (nb, sb) = count_step(scene, b);
            steps.push(capitalise(&sa));
            steps.push(capitalise(&sb));
            let d = slip.map_or(na - nb, |s| s.nudge(na - nb, false));
            steps.push(format!("{na} - {nb} = {d}."));
            d.to_string()
        }
        Question::CountCompare { a, b } => {
            let (na, sa) = count_step(scene, a);
            let (nb, sb) = count_step(scene, b);
            steps.push(capitalise(&sa));
            steps.push(capitalise(&sb));
            let more = (na > nb) ^ slip.is_some();
            let rel = if more { "more than" } else { "not more than" };
            steps.push(format!("{na} is {rel} {nb}."));
            if more { "yes" } else { "no" }.to_string()
        }
        Question::DigitSum => {
            let digits = digits_in(scene, |_| true);
            if digits.len() < 2 {
                return None;
            }
            let sum: i64 = digits.iter().map(|&(d, _)| i64::from(d)).sum();
            steps.push(format!("The digits shown are {}.", digit_list(&digits)));
            let total = slip.map_or(sum, |s| s.nudge(sum, true));
            steps.push(format!("{} = {total}.", plus_chain(&digits)));
            total.to_string()
        }
        Question::CountCombo { a, b, c } => {
            let (na, sa) = count_step(scene, a);
            let (nb, sb) = count_step(scene, b);
            let (nc, sc) = count_step(scene, c);
            steps.push(capitalise(&sa));
            steps.push(capitalise(&sb));
            steps.push(capitalise(&sc));
            // A slip lands in the first addition and propagates through the subtraction.
            let sum = slip.map_or(na + nb, |s| s.nudge(na + nb, true));
            steps.push(format!("{na} + {nb} = {sum}."));
            let r = sum - nc;
            steps.push(format!("{sum} - {nc} = {r}."));
            r.to_string()
        }
        Question::DigitTimesCount {
            colour,
            shape,
            filter,
        } => {
            let o = scene.unique(colour, shape)?;
            let d = i64::from(o.label.as_ref()?.digit()?);
            steps.push(format!(
                "The {colour} {shape} in the {} cell shows the digit {d}.",
                o.cell.name()
            ));
            let (n, s) = count_step(scene, filter);
            steps.push(capitalise(&s));
            let p = slip.map_or(d * n, |sl| sl.nudge(d * n, true));
            steps.push(format!("{d} x {n} = {p}."));
            p.to_string()
        }
        Question::LineDigitSum { line } => {
            let digits = digits_in(scene, |c| line.contains(c));
            if digits.is_empty() {
                return None;
            }
            let sum: i64 = digits.iter().map(|&(d, _)| i64::from(d)).sum();
            steps.push(format!(
                "The digits in {} are {}.",
                line.phrase(),
                digit_list(&digits)
            ));
            let total = slip.map_or(sum, |s| s.nudge(sum, true));
            if digits.len() == 1 {
                steps.push(format!("With a single digit the sum is {total}."));
            } else {
                steps.push(format!("{} = {total}.", plus_chain(&digits)));
            }
            total.to_string()
        }
    };
    Some(Solution { steps, answer })
}

fn attr_value(o: &super::scene::Object, a: Attribute) -> String {
    match a {
        Attribute::Colour => o.colour.name().to_string(),
        Attribute::Shape => o.shape.name().to_string(),
        Attribute::Size => o.size.name().to_string(),
    }
}

fn attr_name(a: Attribute) -> &'static str {
    match a {
        Attribute::Colour => "colour",
        Attribute::Shape => "shape",
        Attribute::Size => "size",
    }
}

fn other_attr_value(v: &str, a: Attribute, seed: u64) -> String {
    let names: Vec<&str> = match a {
        Attribute::Colour => Colour::ALL.iter().map(|c| c.name()).collect(),
        Attribute::Shape => Shape::ALL.iter().map(|s| s.name()).collect(),
        Attribute::Size => Size::ALL.iter().map(|s| s.name()).collect(),
    };
    let others: Vec<&str> = names.into_iter().filter(|n| *n != v).collect();
    others[(seed as usize >> 1) % others.len()].to_string()
}

fn wrong_label(label: &Label, scene: &Scene, slip: Slip) -> String {
    let truth = label.text();
    // Prefer another label in the scene (the wrong object was read); else a neighbour digit or
    // another word.
    let others: Vec<String> = scene
        .objects
        .iter()
        .filter_map(|o| o.label.as_ref().map(Label::text))
        .filter(|t| *t != truth)
        .collect();
    if !others.is_empty() {
        return others[(slip.seed as usize >> 1) % others.len()].clone();
    }
    match label {
        Label::Digit(d) => ((d + 1 + (slip.seed >> 1) as u8 % 9) % 10).to_string(),
        Label::Word(w) => {
            let pool: Vec<&&str> = super::scene::WORDS.iter().filter(|x| **x != w).collect();
            pool[(slip.seed as usize >> 1) % pool.len()].to_string()
        }
    }
}

/// (digit, cell) for every digit label whose cell passes `keep`, in reading order.
fn digits_in(scene: &Scene, keep: impl Fn(Cell) -> bool) -> Vec<(u8, Cell)> {
    scene
        .objects
        .iter()
        .filter(|o| keep(o.cell))
        .filter_map(|o| o.label.as_ref()?.digit().map(|d| (d, o.cell)))
        .collect()
}

fn digit_list(digits: &[(u8, Cell)]) -> String {
    digits
        .iter()
        .map(|(d, c)| format!("{d} ({})", c.name()))
        .collect::<Vec<_>>()
        .join(" and ")
}

fn plus_chain(digits: &[(u8, Cell)]) -> String {
    digits
        .iter()
        .map(|(d, _)| d.to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

fn random_filter<R: RngExt + ?Sized>(rng: &mut R) -> Filter {
    match rng.random_range(0..5u8) {
        0 | 1 => Filter::Shape(Shape::ALL[rng.random_range(0..Shape::ALL.len())]),
        2 | 3 => Filter::Colour(Colour::ALL[rng.random_range(0..Colour::ALL.len())]),
        _ => Filter::Size(Size::ALL[rng.random_range(0..Size::ALL.len())]),
    }
}

/// A filter on the attribute `kind` (0 shape, 1 colour, 2 size) of a random object of the
/// scene, so the count it selects is at least one.
fn scene_filter<R: RngExt + ?Sized>(rng: &mut R, scene: &Scene, kind: u8) -> Filter {
    let o = &scene.objects[rng.random_range(0..scene.objects.len())];
    match kind {
        0 => Filter::Shape(o.shape),
        1 => Filter::Colour(o.colour),
        _ => Filter::Size(o.size),
    }
}

/// A filter that usually (three times in four) selects something present in the scene.
fn likely_filter<R: RngExt + ?Sized>(rng: &mut R, scene: &Scene) -> Filter {
    if rng.random_bool(0.75) {
        let kind = rng.random_range(0..3u8);
        scene_filter(rng, scene, kind)
    } else {
        random_filter(rng)
    }
}

/// Two different filters selecting by the same attribute (so the sets are disjoint), the first
/// always and the second usually taken from objects present in the scene.
fn filter_pair<R: RngExt + ?Sized>(rng: &mut R, scene: &Scene) -> (Filter, Filter) {
    let kind = match rng.random_range(0..5u8) {
        0 | 1 => 0,
        2 | 3 => 1,
        _ => 2,
    };
    let a = scene_filter(rng, scene, kind);
    for _ in 0..8 {
        let b = scene_filter(rng, scene, kind);
        if b != a {
            return (a, b);
        }
    }
    loop {
        let b = match kind {
            0 => Filter::Shape(Shape::ALL[rng.random_range(0..Shape::ALL.len())]),
            1 => Filter::Colour(Colour::ALL[rng.random_range(0..Colour::ALL.len())]),
            _ => Filter::Size(Size::ALL[rng.random_range(0..Size::ALL.len())]),
        };
        if b != a {
            return (a, b);
        }
    }
}

/// A random object of `scene`, by reference, satisfying `keep`, and unique by colour and shape.
fn pick_unique<'a, R: RngExt + ?Sized>(
    rng: &mut R,
    scene: &'a Scene,
    keep: impl Fn(&super::scene::Object) -> bool,
) -> Option<&'a super::scene::Object> {
    let cands: Vec<_> = scene
        .objects
        .iter()
        .filter(|o| keep(o) && scene.unique(o.colour, o.shape).is_some())
        .collect();
    if cands.is_empty() {
        None
    } else {
        Some(cands[rng.random_range(0..cands.len())])
    }
}

/// Draws a question of `level` that `scene` supports, or `None` if this draw does not fit the
/// scene (the caller resamples). Counting questions prefer filters with a non-zero count.
pub fn sample_question<R: RngExt + ?Sized>(
    rng: &mut R,
    scene: &Scene,
    level: u8,
) -> Option<Question> {
    let q = match level {
        1 => match rng.random_range(0..4u8) {
            0 => {
                let o = &scene.objects[rng.random_range(0..scene.objects.len())];
                let filter = match rng.random_range(0..3u8) {
                    0 => Filter::Shape(o.shape),
                    1 => Filter::Colour(o.colour),
                    _ => random_filter(rng),
                };
                Question::Count { filter }
            }
            1 => {
                let o = &scene.objects[rng.random_range(0..scene.objects.len())];
                let attribute = [Attribute::Colour, Attribute::Shape, Attribute::Size]
                    [rng.random_range(0..3usize)];
                Question::AttributeAt {
                    cell: o.cell,
                    attribute,
                }
            }
            2 => {
                let o = pick_unique(rng, scene, |_| true)?;
                Question::PositionOf {
                    colour: o.colour,
                    shape: o.shape,
                }
            }
            _ => {
                let o = pick_unique(rng, scene, |o| o.label.is_some())?;
                Question::ReadLabel {
                    colour: o.colour,
                    shape: o.shape,
                }
            }
        },
        2 => match rng.random_range(0..4u8) {
            0 => {
                let (a, b) = filter_pair(rng, scene);
                Question::CountSum { a, b }
            }
            1 => {
                let (a, b) = filter_pair(rng, scene);
                let (a, b) = if scene.count(a) >= scene.count(b) {
                    (a, b)
                } else {
                    (b, a)
                };
                Question::CountDiff { a, b }
            }
            2 => {
                let (a, b) = filter_pair(rng, scene);
                if scene.count(a) == scene.count(b) && rng.random_bool(0.7) {
                    return None;
                }
                Question::CountCompare { a, b }
            }
            _ => Question::DigitSum,
        },
        _ => match rng.random_range(0..3u8) {
            0 => {
                let (a, b) = filter_pair(rng, scene);
                let c = likely_filter(rng, scene);
                if c == a || c == b {
                    return None;
                }
                Question::CountCombo { a, b, c }
            }
            1 => {
                let o = pick_unique(rng, scene, |o| {
                    o.label.as_ref().and_then(Label::digit).is_some()
                })?;
                let filter = likely_filter(rng, scene);
                Question::DigitTimesCount {
                    colour: o.colour,
                    shape: o.shape,
                    filter,
                }
            }
            _ => {
                let line = if rng.random_bool(0.5) {
                    Line::Row(rng.random_range(0..3u8))
                } else {
                    Line::Column(rng.random_range(0..3u8))
                };
                Question::LineDigitSum { line }
            }
        },
    };
    // Counting questions about absent things are legal but dull; keep a few.
    let all_zero = match q {
        Question::Count { filter } => scene.count(filter) == 0,
        Question::CountSum { a, b } | Question::CountDiff { a, b } => {
            scene.count(a) + scene.count(b) == 0
        }
        _ => false,
    };
    if all_zero && rng.random_bool(0.8) {
        return None;
    }
    solve(&q, scene, None).map(|_| q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::scene::{Object, sample_scene};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn obj(shape: Shape, colour: Colour, row: u8, col: u8, label: Option<Label>) -> Object {
        Object {
            shape,
            colour,
            size: if label.is_some() {
                Size::Large
            } else {
                Size::Small
            },
            cell: Cell { row, col },
            label,
            offset: (0, 0),
        }
    }

    fn fixed_scene() -> Scene {
        Scene {
            objects: vec![
                obj(Shape::Circle, Colour::Red, 0, 0, Some(Label::Digit(7))),
                obj(Shape::Square, Colour::Blue, 0, 2, None),
                obj(Shape::Circle, Colour::Green, 1, 1, Some(Label::Digit(2))),
                obj(
                    Shape::Star,
                    Colour::Red,
                    2,
                    1,
                    Some(Label::Word("cat".into())),
                ),
            ],
        }
    }

    #[test]
    fn hand_checked_answers() {
        let s = fixed_scene();
        let ans = |q: Question| solve(&q, &s, None).unwrap().answer;
        assert_eq!(
            ans(Question::Count {
                filter: Filter::Shape(Shape::Circle)
            }),
            "2"
        );
        assert_eq!(
            ans(Question::Count {
                filter: Filter::Colour(Colour::Red)
            }),
            "2"
        );
        assert_eq!(
            ans(Question::AttributeAt {
                cell: Cell { row: 0, col: 2 },
                attribute: Attribute::Shape
            }),
            "square"
        );
        assert_eq!(
            ans(Question::PositionOf {
                colour: Colour::Red,
                shape: Shape::Star
            }),
            "bottom middle"
        );
        assert_eq!(
            ans(Question::ReadLabel {
                colour: Colour::Red,
                shape: Shape::Star
            }),
            "cat"
        );
        assert_eq!(ans(Question::DigitSum), "9");
        assert_eq!(
            ans(Question::CountDiff {
                a: Filter::Shape(Shape::Circle),
                b: Filter::Shape(Shape::Square)
            }),
            "1"
        );
        assert_eq!(
            ans(Question::CountCompare {
                a: Filter::Colour(Colour::Blue),
                b: Filter::Colour(Colour::Red)
            }),
            "no"
        );
        assert_eq!(
            ans(Question::CountCombo {
                a: Filter::Shape(Shape::Circle),
                b: Filter::Shape(Shape::Star),
                c: Filter::Colour(Colour::Red)
            }),
            "1"
        );
        assert_eq!(
            ans(Question::DigitTimesCount {
                colour: Colour::Red,
                shape: Shape::Circle,
                filter: Filter::Shape(Shape::Circle)
            }),
            "14"
        );
        assert_eq!(
            ans(Question::LineDigitSum {
                line: Line::Column(0)
            }),
            "7"
        );
        // Unsupported: no object there, ambiguous object, no digit in the line.
        assert!(
            solve(
                &Question::AttributeAt {
                    cell: Cell { row: 2, col: 2 },
                    attribute: Attribute::Colour
                },
                &s,
                None
            )
            .is_none()
        );
        assert!(
            solve(
                &Question::LineDigitSum {
                    line: Line::Column(2)
                },
                &s,
                None
            )
            .is_none()
        );
    }

    #[test]
    fn a_slip_always_changes_the_answer() {
        let mut rng = StdRng::seed_from_u64(11);
        let mut checked = 0;
        for i in 0..3000u64 {
            let level = (i % 3) as u8 + 1;
            let scene = sample_scene(&mut rng, level);
            let Some(q) = sample_question(&mut rng, &scene, level) else {
                continue;
            };
            assert_eq!(q.level(), level);
            let truth = solve(&q, &scene, None).unwrap();
            for seed in 0..4 {
                let wrong = solve(&q, &scene, Some(Slip { seed })).unwrap();
                assert_ne!(wrong.answer, truth.answer, "{q:?} on {scene:?}");
            }
            assert!(!truth.answer.contains(','));
            checked += 1;
        }
        assert!(checked > 1500, "only {checked} questions fitted");
    }
}
