//! The RL prompt parquet read by the alignment and RLVR stages.
//!
//! Columns (optional ones are nullable and may be absent on read):
//!
//! | column | arrow type | |
//! |---|---|---|
//! | `prompt` | utf8 | user turn with one `<image>` placeholder per image |
//! | `images` | list<struct<bytes: binary, path: utf8>> | as Hugging Face image datasets store them; `bytes` may be null when `path` names a file (relative to the parquet's folder) |
//! | `ground_truth` | utf8 | canonical answer, non-empty |
//! | `id` | utf8, optional | item id |
//! | `question` | utf8, optional | the question alone (for judges and reports) |
//! | `teacher_response` | utf8, optional | full teacher response |
//! | `teacher_caption` | utf8, optional | `<caption>…</caption>` |
//! | `teacher_cot` | utf8, optional | `<think>…</think>\n<answer>…</answer>` |
//! | `data_source` | utf8, optional | reward routing |
//! | `difficulty` | int32, optional | synth level 1..=3 |
//! | `family` | utf8, optional | synth question family |
//! | `scene` | utf8, optional | synth scene as JSON ([`crate::data::synth::Scene`]), for error classification |
//!
//! String columns are also accepted as large_utf8 or utf8_view, `bytes` as large_binary, and
//! `images` as a large_list. Any other type is a column error naming the column.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int32Builder, ListBuilder, StringBuilder, StructBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int32Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use super::error::{DataError, Loaded, Location, ReadOptions};
use super::io;
use super::sharegpt::IMAGE_TOKEN;

/// One image cell: inline bytes, a path, or both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub bytes: Option<Vec<u8>>,
    pub path: Option<String>,
}

/// One RL prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RlRecord {
    pub prompt: String,
    pub images: Vec<ImageRef>,
    pub ground_truth: String,
    pub id: Option<String>,
    pub question: Option<String>,
    pub teacher_response: Option<String>,
    pub teacher_caption: Option<String>,
    pub teacher_cot: Option<String>,
    pub data_source: Option<String>,
    pub difficulty: Option<i32>,
    pub family: Option<String>,
    pub scene: Option<String>,
}

impl RlRecord {
    /// The bytes of image `i`: inline bytes, else the file at its path resolved against the
    /// parquet's folder `base`.
    pub fn image_bytes(&self, i: usize, parquet_file: &Path) -> Result<Vec<u8>, String> {
        let img = self
            .images
            .get(i)
            .ok_or_else(|| format!("no image {i} (the row has {})", self.images.len()))?;
        match (&img.bytes, &img.path) {
            (Some(b), _) if !b.is_empty() => Ok(b.clone()),
            (_, Some(p)) => {
                let full = io::resolve(parquet_file, p);
                std::fs::read(&full).map_err(|e| format!("image {}: {e}", full.display()))
            }
            _ => Err(format!("image {i} has neither bytes nor path")),
        }
    }
}

const STRING_COLUMNS: [&str; 9] = [
    "id",
    "question",
    "teacher_response",
    "teacher_caption",
    "teacher_cot",
    "data_source",
    "family",
    "scene",
    "prompt",
];

fn image_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, true),
        Field::new("path", DataType::Utf8, true),
    ])
}

fn schema() -> Schema {
    let item = Field::new("item", DataType::Struct(image_fields()), true);
    Schema::new(vec![
        Field::new("prompt", DataType::Utf8, false),
        Field::new("images", DataType::List(Arc::new(item)), false),
        Field::new("ground_truth", DataType::Utf8, false),
        Field::new("id", DataType::Utf8, true),
        Field::new("question", DataType::Utf8, true),
        Field::new("teacher_response", DataType::Utf8, true),
        Field::new("teacher_caption", DataType::Utf8, true),
        Field::new("teacher_cot", DataType::Utf8, true),
        Field::new("data_source", DataType::Utf8, true),
        Field::new("difficulty", DataType::Int32, true),
        Field::new("family", DataType::Utf8, true),
        Field::new("scene", DataType::Utf8, true),
    ])
}

/// Structural checks of one record (no file access).
fn validate(r: &RlRecord) -> Result<(), String> {
    if r.prompt.trim().is_empty() {
        return Err("`prompt` is empty".into());
    }
    if r.ground_truth.trim().is_empty() {
        return Err("`ground_truth` (the answer) is empty".into());
    }
    let placeholders = r.prompt.matches(IMAGE_TOKEN).count();
    if placeholders != r.images.len() {
        return Err(format!(
            "`prompt` has {placeholders} {IMAGE_TOKEN} placeholders but `images` has {}",
            r.images.len()
        ));
    }
    if let Some(scene) = &r.scene {
        crate::data::synth::Scene::from_json(scene)
            .map_err(|e| format!("`scene` is not a valid scene: {e}"))?;
    }
    Ok(())
}

/// Writes records atomically as one parquet file (snappy). Fails, naming the row, on an empty
/// prompt or answer or a placeholder/image count mismatch.
pub fn write(path: &Path, records: &[RlRecord]) -> Result<(), DataError> {
    for (i, r) in records.iter().enumerate() {
        validate(r).map_err(|m| DataError::record(path, Location::Row(i), m))?;
    }
    let batch = to_batch(records).map_err(|e| DataError::format(path, e))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    io::atomic_write(path, |w| {
        let mut writer =
            ArrowWriter::try_new(w, batch.schema(), Some(props)).map_err(std::io::Error::other)?;
        writer.write(&batch).map_err(std::io::Error::other)?;
        writer.close().map_err(std::io::Error::other)?;
        Ok(())
    })
}

fn to_batch(records: &[RlRecord]) -> Result<RecordBatch, arrow_schema::ArrowError> {
    let schema = Arc::new(schema());
    let strings = |f: &dyn Fn(&RlRecord) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for r in records {
            b.append_option(f(r));
        }
        Arc::new(b.finish())
    };
    let item = Arc::new(Field::new("item", DataType::Struct(image_fields()), true));
    let mut images = ListBuilder::new(StructBuilder::new(
        image_fields(),
        vec![
            Box::new(BinaryBuilder::new()),
            Box::new(StringBuilder::new()),
        ],
    ))
    .with_field(item);
    for r in records {
        let st = images.values();
        for img in &r.images {
            if let Some(b) = st.field_builder::<BinaryBuilder>(0) {
                b.append_option(img.bytes.as_deref());
            }
            if let Some(b) = st.field_builder::<StringBuilder>(1) {
                b.append_option(img.path.as_deref());
            }
            st.append(true);
        }
        images.append(true);
    }
    let mut difficulty = Int32Builder::new();
    for r in records {
        difficulty.append_option(r.difficulty);
    }
    let columns: Vec<ArrayRef> = vec![
        strings(&|r| Some(r.prompt.as_str())),
        Arc::new(images.finish()),
        strings(&|r| Some(r.ground_truth.as_str())),
        strings(&|r| r.id.as_deref()),
        strings(&|r| r.question.as_deref()),
        strings(&|r| r.teacher_response.as_deref()),
        strings(&|r| r.teacher_caption.as_deref()),
        strings(&|r| r.teacher_cot.as_deref()),
        strings(&|r| r.data_source.as_deref()),
        Arc::new(difficulty.finish()),
        strings(&|r| r.family.as_deref()),
        strings(&|r| r.scene.as_deref()),
    ];
    RecordBatch::try_new(schema, columns)
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Checks the file's schema: required columns present, every known column of an accepted type.
fn check_schema(path: &Path, schema: &Schema) -> Result<(), DataError> {
    let col_err = |column: &str, message: String| DataError::Column {
        path: path.to_path_buf(),
        column: column.to_string(),
        message,
    };
    for required in ["prompt", "images", "ground_truth"] {
        if schema.field_with_name(required).is_err() {
            return Err(col_err(required, "missing (required)".into()));
        }
    }
    for f in schema.fields() {
        let name = f.name().as_str();
        let t = f.data_type();
        let ok = match name {
            "ground_truth" => is_string(t),
            n if STRING_COLUMNS.contains(&n) => is_string(t),
            "difficulty" => matches!(t, DataType::Int32 | DataType::Int64),
            "images" => match t {
                DataType::List(item) | DataType::LargeList(item) => match item.data_type() {
                    DataType::Struct(fields) => {
                        let bytes = fields.iter().find(|f| f.name() == "bytes");
                        let p = fields.iter().find(|f| f.name() == "path");
                        // An all-null child may be typed `null` (pyarrow infers that).
                        let bytes_ok = bytes.is_none_or(|f| {
                            matches!(
                                f.data_type(),
                                DataType::Binary | DataType::LargeBinary | DataType::Null
                            )
                        });
                        let path_ok = p.is_none_or(|f| {
                            is_string(f.data_type()) || f.data_type() == &DataType::Null
                        });
                        bytes_ok && path_ok && (bytes.is_some() || p.is_some())
                    }
                    _ => false,
                },
                _ => false,
            },
            _ => true, // unknown columns are ignored
        };
        if !ok {
            let want = match name {
                "difficulty" => "int32 or int64",
                "images" => "list<struct<bytes: binary, path: string>>",
                _ => "string",
            };
            return Err(col_err(name, format!("expected {want}, found {t}")));
        }
    }
    Ok(())
}

/// A string cell: `None` for a null or absent column.
fn str_at(col: Option<&ArrayRef>, row: usize) -> Option<String> {
    let col = col?;
    if col.is_null(row) {
        return None;
    }
    if let Some(a) = col.as_string_opt::<i32>() {
        Some(a.value(row).to_string())
    } else if let Some(a) = col.as_string_opt::<i64>() {
        Some(a.value(row).to_string())
    } else {
        col.as_string_view_opt().map(|a| a.value(row).to_string())
    }
}

fn bin_at(col: Option<&ArrayRef>, row: usize) -> Option<Vec<u8>> {
    let col = col?;
    if col.is_null(row) {
        return None;
    }
    if let Some(a) = col.as_binary_opt::<i32>() {
        Some(a.value(row).to_vec())
    } else {
        col.as_binary_opt::<i64>().map(|a| a.value(row).to_vec())
    }
}

fn images_at(col: &ArrayRef, row: usize) -> Result<Vec<ImageRef>, String> {
    if col.is_null(row) {
        return Err("`images` is null".into());
    }
    let (values, start, end) = if let Some(l) = col.as_list_opt::<i32>() {
        let o = l.value_offsets();
        (l.values(), o[row] as usize, o[row + 1] as usize)
    } else if let Some(l) = col.as_list_opt::<i64>() {
        let o = l.value_offsets();
        (l.values(), o[row] as usize, o[row + 1] as usize)
    } else {
        return Err("`images` is not a list".into());
    };
    let st = values
        .as_struct_opt()
        .ok_or("`images` items are not structs")?;
    let bytes = st.column_by_name("bytes");
    let paths = st.column_by_name("path");
    (start..end)
        .map(|j| {
            if st.is_null(j) {
                return Err(format!("images[{}] is null", j - start));
            }
            Ok(ImageRef {
                bytes: bin_at(bytes, j),
                path: str_at(paths, j),
            })
        })
        .collect()
}

fn int_at(col: Option<&ArrayRef>, row: usize) -> Option<i32> {
    let col = col?;
    if col.is_null(row) {
        return None;
    }
    if let Some(a) = col.as_primitive_opt::<Int32Type>() {
        Some(a.value(row))
    } else {
        col.as_primitive_opt::<Int64Type>()
            .and_then(|a| i32::try_from(a.value(row)).ok())
    }
}

fn row_record(path: &Path, batch: &RecordBatch, row: usize) -> Result<RlRecord, String> {
    let col = |name: &str| batch.column_by_name(name);
    let required = |name: &str| str_at(col(name), row).ok_or(format!("`{name}` is null"));
    let images_col = col("images").ok_or("`images` column missing")?;
    let record = RlRecord {
        prompt: required("prompt")?,
        images: images_at(images_col, row)?,
        ground_truth: required("ground_truth")?,
        id: str_at(col("id"), row),
        question: str_at(col("question"), row),
        teacher_response: str_at(col("teacher_response"), row),
        teacher_caption: str_at(col("teacher_caption"), row),
        teacher_cot: str_at(col("teacher_cot"), row),
        data_source: str_at(col("data_source"), row),
        difficulty: int_at(col("difficulty"), row),
        family: str_at(col("family"), row),
        scene: str_at(col("scene"), row),
    };
    validate(&record)?;
    for (i, img) in record.images.iter().enumerate() {
        match (&img.bytes, &img.path) {
            (Some(b), _) if !b.is_empty() => io::check_image_bytes(b),
            (_, Some(p)) => io::check_image_file(&io::resolve(path, p)),
            _ => Err("neither bytes nor path".to_string()),
        }
        .map_err(|e| format!("images[{i}]: {e}"))?;
    }
    Ok(record)
}

/// Reads an RL parquet file. Rows are numbered from 0 across row groups.
pub fn read(path: &Path, opts: ReadOptions) -> Result<Loaded<RlRecord>, DataError> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DataError::format(path, e))?;
    check_schema(path, builder.schema())?;
    let reader = builder.build().map_err(|e| DataError::format(path, e))?;
    let mut out = Loaded::new();
    let mut base = 0;
    for batch in reader {
        let batch = batch.map_err(|e| DataError::format(path, e))?;
        for row in 0..batch.num_rows() {
            let outcome = row_record(path, &batch, row);
            out.push(opts, path, Location::Row(base + row), outcome)?;
        }
        base += batch.num_rows();
    }
    Ok(out)
}
