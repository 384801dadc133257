//! Scenes of the procedural task: what objects exist and where, sampled from a seeded RNG.
//!
//! A scene is a 3×3 grid of cells; each cell holds at most one object. An object has a shape, a
//! colour, a size, a cell and optionally a label (a digit or a short word) drawn on it. This
//! module owns the vocabulary (the names used in questions, captions and answers, in one place)
//! and scene sampling. It never draws pixels (that is `render`) and never phrases questions.

use std::fmt;

use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Number of rows and columns of the grid.
pub const GRID: u8 = 3;

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $word:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every value, in a fixed order (sampling indexes into it).
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The canonical lower-case word used in questions, captions and answers.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $word),+ }
            }

            /// Parses the canonical word (exact, lower-case).
            pub fn parse(word: &str) -> Option<$name> {
                match word { $($word => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

vocabulary!(
    /// The outline of an object.
    Shape { Circle => "circle", Square => "square", Triangle => "triangle", Star => "star", Diamond => "diamond" }
);

vocabulary!(
    /// The fill colour of an object. Seven colours with clearly separated hues.
    Colour {
        Red => "red", Orange => "orange", Yellow => "yellow", Green => "green", Blue => "blue",
        Purple => "purple", Gray => "gray",
    }
);

vocabulary!(
    /// Two sizes; a large object is about 1.7 times a small one.
    Size { Small => "small", Large => "large" }
);

impl Shape {
    /// Plural form ("circles").
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
            Shape::Star => "stars",
            Shape::Diamond => "diamonds",
        }
    }
}

impl Colour {
    /// sRGB fill colour.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 40, 40],
            Colour::Orange => [245, 140, 20],
            Colour::Yellow => [240, 215, 30],
            Colour::Green => [40, 160, 60],
            Colour::Blue => [40, 90, 220],
            Colour::Purple => [140, 60, 190],
            Colour::Gray => [128, 128, 128],
        }
    }

    /// Whether text drawn on this colour should be black (light fills) rather than white.
    pub fn wants_dark_text(self) -> bool {
        matches!(self, Colour::Yellow | Colour::Orange)
    }
}

/// Words that may be drawn on objects: three letters, none of them a colour, shape or size word.
pub const WORDS: &[&str] = &[
    "cat", "dog", "sun", "cup", "key", "hat", "owl", "map", "box", "fox",
];

/// A grid cell, row 0 at the top, column 0 on the left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub row: u8,
    pub col: u8,
}

/// Row names, top to bottom.
pub const ROW_NAMES: [&str; 3] = ["top", "middle", "bottom"];
/// Column names, left to right.
pub const COL_NAMES: [&str; 3] = ["left", "middle", "right"];

impl Cell {
    /// All nine cells in reading order (row-major).
    pub fn all() -> impl Iterator<Item = Cell> {
        (0..GRID).flat_map(|row| (0..GRID).map(move |col| Cell { row, col }))
    }

    /// The cell's name: "top left", …, "center" for the middle cell, …, "bottom right".
    pub fn name(self) -> &'static str {
        const NAMES: [[&str; 3]; 3] = [
            ["top left", "top middle", "top right"],
            ["middle left", "center", "middle right"],
            ["bottom left", "bottom middle", "bottom right"],
        ];
        NAMES[usize::from(self.row.min(2))][usize::from(self.col.min(2))]
    }

    /// Parses a cell name produced by [`Cell::name`].
    pub fn parse(name: &str) -> Option<Cell> {
        Cell::all().find(|c| c.name() == name)
    }

    /// Index in reading order (0..9).
    pub fn index(self) -> usize {
        usize::from(self.row) * usize::from(GRID) + usize::from(self.col)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Text drawn on an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    Digit(u8),
    Word(String),
}

impl Label {
    /// The text as drawn and as answered ("7", "cat").
    pub fn text(&self) -> String {
        match self {
            Label::Digit(d) => d.to_string(),
            Label::Word(w) => w.clone(),
        }
    }

    /// The digit, if this is a digit label.
    pub fn digit(&self) -> Option<u8> {
        match self {
            Label::Digit(d) => Some(*d),
            Label::Word(_) => None,
        }
    }
}

/// One object in a scene.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub colour: Colour,
    pub size: Size,
    pub cell: Cell,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Label>,
    /// Offset of the object's centre from the cell centre, in pixels (rendering only; it carries
    /// no meaning and is excluded from [`Scene::key`]).
    #[serde(default)]
    pub offset: (i8, i8),
}

impl Object {
    /// "large red circle".
    pub fn describe(&self) -> String {
        format!("{} {} {}", self.size, self.colour, self.shape)
    }
}

/// A scene: objects sorted by cell in reading order, at most one per cell.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scene {
    pub objects: Vec<Object>,
}

/// Which objects a count refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filter {
    Shape(Shape),
    Colour(Colour),
    Size(Size),
}

impl Filter {
    /// Whether `o` is counted.
    pub fn matches(self, o: &Object) -> bool {
        match self {
            Filter::Shape(s) => o.shape == s,
            Filter::Colour(c) => o.colour == c,
            Filter::Size(z) => o.size == z,
        }
    }

    /// Plural noun phrase: "circles", "red objects", "small objects".
    pub fn phrase(self) -> String {
        match self {
            Filter::Shape(s) => s.plural().to_string(),
            Filter::Colour(c) => format!("{c} objects"),
            Filter::Size(z) => format!("{z} objects"),
        }
    }

    /// Whether both filters select by the same attribute (then they select disjoint sets).
    pub fn same_kind(self, other: Filter) -> bool {
        matches!(
            (self, other),
            (Filter::Shape(_), Filter::Shape(_))
                | (Filter::Colour(_), Filter::Colour(_))
                | (Filter::Size(_), Filter::Size(_))
        )
    }
}

impl Scene {
    /// The object in `cell`, if any.
    pub fn at(&self, cell: Cell) -> Option<&Object> {
        self.objects.iter().find(|o| o.cell == cell)
    }

    /// Number of objects selected by `f`.
    pub fn count(&self, f: Filter) -> usize {
        self.objects.iter().filter(|o| f.matches(o)).count()
    }

    /// The only object with this colour and shape, if exactly one exists.
    pub fn unique(&self, colour: Colour, shape: Shape) -> Option<&Object> {
        let mut it = self
            .objects
            .iter()
            .filter(|o| o.colour == colour && o.shape == shape);
        let first = it.next()?;
        it.next().is_none().then_some(first)
    }

    /// Cells holding no object.
    pub fn empty_cells(&self) -> Vec<Cell> {
        Cell::all().filter(|c| self.at(*c).is_none()).collect()
    }

    /// Restores the invariant that objects are in reading order.
    pub fn sort(&mut self) {
        self.objects.sort_by_key(|o| o.cell.index());
    }

    /// A semantic identity of the scene (objects and labels, not pixel offsets): the first 16 hex
    /// digits of the SHA-256 of a canonical text. Train and eval splits never share a key.
    pub fn key(&self) -> String {
        let mut canon = String::new();
        for o in &self.objects {
            let label = o.label.as_ref().map(Label::text).unwrap_or_default();
            canon.push_str(&format!(
                "{}{}|{}|{}|{}|{};",
                o.cell.row, o.cell.col, o.shape, o.colour, o.size, label
            ));
        }
        let digest = Sha256::digest(canon.as_bytes());
        hex::encode(&digest[..8])
    }

    /// Parses the JSON written to the `scene` column of the RL parquet.
    pub fn from_json(text: &str) -> Result<Scene, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// How busy scenes are at each difficulty level.
#[derive(Clone, Copy, Debug)]
struct Density {
    min_objects: usize,
    max_objects: usize,
    /// Probability that a large object carries a label.
    label_prob: f64,
}

fn density(difficulty: u8) -> Density {
    match difficulty {
        1 => Density {
            min_objects: 2,
            max_objects: 4,
            label_prob: 0.5,
        },
        2 => Density {
            min_objects: 3,
            max_objects: 6,
            label_prob: 0.6,
        },
        _ => Density {
            min_objects: 4,
            max_objects: 8,
            label_prob: 0.7,
        },
    }
}

/// Largest pixel offset of an object centre from its cell centre.
pub const MAX_OFFSET: i8 = 4;

/// Samples a scene for `difficulty` (1..=3; larger values behave as 3).
pub fn sample_scene<R: RngExt + ?Sized>(rng: &mut R, difficulty: u8) -> Scene {
    let d = density(difficulty);
    let n = rng.random_range(d.min_objects..=d.max_objects);
    let mut cells: Vec<Cell> = Cell::all().collect();
    // Partial Fisher–Yates: the first n cells are a uniform sample without replacement.
    for i in 0..n {
        let j = rng.random_range(i..cells.len());
        cells.swap(i, j);
    }
    let mut objects = Vec::with_capacity(n);
    for &cell in &cells[..n] {
        let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
        let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
        let size = if rng.random_bool(0.55) {
            Size::Large
        } else {
            Size::Small
        };
        let label = (size == Size::Large && rng.random_bool(d.label_prob)).then(|| {
            if rng.random_bool(0.8) {
                Label::Digit(rng.random_range(0..10u8))
            } else {
                Label::Word(WORDS[rng.random_range(0..WORDS.len())].to_string())
            }
        });
        let offset = (
            rng.random_range(-MAX_OFFSET..=MAX_OFFSET),
            rng.random_range(-MAX_OFFSET..=MAX_OFFSET),
        );
        objects.push(Object {
            shape,
            colour,
            size,
            cell,
            label,
            offset,
        });
    }
    let mut scene = Scene { objects };
    scene.sort();
    scene
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn cell_names_round_trip() {
        for c in Cell::all() {
            assert_eq!(Cell::parse(c.name()), Some(c));
        }
        assert_eq!(Cell::parse("center"), Some(Cell { row: 1, col: 1 }));
        assert_eq!(Cell::parse("nowhere"), None);
    }

    #[test]
    fn sampled_scenes_respect_invariants() {
        let mut rng = StdRng::seed_from_u64(3);
        for difficulty in 1..=3 {
            for _ in 0..200 {
                let s = sample_scene(&mut rng, difficulty);
                let d = density(difficulty);
                assert!((d.min_objects..=d.max_objects).contains(&s.objects.len()));
                let mut cells: Vec<usize> = s.objects.iter().map(|o| o.cell.index()).collect();
                let sorted = cells.clone();
                cells.dedup();
                assert_eq!(cells, sorted, "cells unique and in reading order");
                for o in &s.objects {
                    assert!(o.label.is_none() || o.size == Size::Large);
                }
            }
        }
    }

    #[test]
    fn key_ignores_offsets_but_not_labels() {
        let mut rng = StdRng::seed_from_u64(9);
        let s = sample_scene(&mut rng, 3);
        let mut moved = s.clone();
        moved.objects[0].offset = (0, 0);
        assert_eq!(s.key(), moved.key());
        let mut recoloured = s.clone();
        recoloured.objects[0].colour = if s.objects[0].colour == Colour::Red {
            Colour::Blue
        } else {
            Colour::Red
        };
        assert_ne!(s.key(), recoloured.key());
    }
}
