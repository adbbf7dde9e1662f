//! Image models in ONNX on tract (pure Rust): a classifier or a YOLO-layout
//! detector, told apart by the model's own metadata (`task`, as Ultralytics
//! and our converter write it) or, without it, by its output's shape.
//!
//! One optimized plan per model, shared by every call; each call runs it on
//! the engine's own thread pool (`compute.vision.threads`), so image calls
//! never queue behind the pool llama.cpp or candle use.

mod classify;
mod detect;
mod ocr;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

use super::image::{ImageEngine, ImageTask};
use super::{EngineError, ModelDir, ModelInfo};

pub use classify::Classifier;
pub use detect::Detector;
pub use ocr::TextReader;

/// An ONNX image model loaded and optimized for one input size.
struct Network {
    plan: Arc<TypedRunnableModel>,
    /// Width and height the network takes.
    width: u32,
    height: u32,
    /// The ONNX `metadata_props`.
    metadata: BTreeMap<String, String>,
    /// The output's shape for one image.
    output_shape: Vec<usize>,
}

impl Network {
    /// Load `path`, its input fixed to one RGB image of the size its
    /// declared input (or its `imgsz` metadata, for dynamic ones) says.
    fn load(path: &Path, dir: &ModelDir, threads: usize) -> Result<Self, EngineError> {
        let model = read_onnx(path, dir, None)?;
        let metadata = metadata(&model);
        let (width, height) = input_size(&model, &metadata).map_err(|e| dir.fail(e))?;
        let plan =
            plan_for(model, height, width, threads).map_err(|e| dir.fail(format!("{e:#}")))?;
        let output_shape = plan
            .model()
            .output_fact(0)
            .ok()
            .and_then(|fact| fact.shape.as_concrete().map(|s| s.to_vec()))
            .ok_or_else(|| dir.fail("its output's shape is not fixed by its input's"))?;
        Ok(Self {
            plan,
            width,
            height,
            metadata,
            output_shape,
        })
    }

    /// Run on one image, already planar (3 x height x width floats): the
    /// first output's values.
    fn run(&self, planar: Vec<f32>) -> Result<Vec<f32>, EngineError> {
        run_plan(&self.plan, planar, self.height, self.width)
            .map(|(_, values)| values)
            .map_err(|e| EngineError::Inference(format!("{e:#}")))
    }

    fn task(&self) -> Option<ImageTask> {
        match self.metadata.get("task").map(String::as_str) {
            Some("classify") => Some(ImageTask::Classify),
            Some("detect") => Some(ImageTask::Detect),
            Some(_) => None,
            // [1, classes] is a classifier; [1, 4 + classes, boxes] a detector.
            None => match self.output_shape.as_slice() {
                [1, _] => Some(ImageTask::Classify),
                [1, _, _] => Some(ImageTask::Detect),
                _ => None,
            },
        }
    }
}

/// Load an ONNX image model: what it does decides the engine. A directory
/// with `det.onnx` and `rec.onnx` is a text reader.
pub fn load(
    path: &Path,
    dir: &ModelDir,
    threads: usize,
) -> Result<Arc<dyn ImageEngine>, EngineError> {
    if [ocr::DETECTOR_FILE, ocr::RECOGNIZER_FILE]
        .iter()
        .all(|f| dir.files.contains_key(*f))
    {
        return Ok(Arc::new(TextReader::load(dir, threads)?));
    }
    let network = Network::load(path, dir, threads)?;
    let size_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let info = |architecture: &str| ModelInfo {
        id: dir.id.to_string(),
        architecture: Some(architecture.to_string()),
        parameters: size_bytes / 4,
        size_bytes,
        context_train: 0,
        has_chat_template: false,
        supports_fill_in_middle: false,
    };
    match network.task() {
        Some(ImageTask::Classify) => Ok(Arc::new(Classifier::new(
            network,
            dir,
            info("onnx classifier"),
        )?)),
        Some(ImageTask::Detect) => Ok(Arc::new(Detector::new(
            network,
            dir,
            info("onnx detector"),
        )?)),
        Some(ImageTask::ReadText) | None => Err(dir.fail(format!(
            "an ONNX model that is neither a classifier (output [1, classes]) nor a YOLO \
             detector (output [1, 4 + classes, boxes]), nor a text reader's directory (det.onnx \
             and rec.onnx); its task metadata says {:?} and its \
             output is {:?}",
            network.metadata.get("task"),
            network.output_shape
        ))),
    }
}

/// `path` (`file`, of a model of several, named in errors) as tract reads it, its input
/// not yet fixed. Only the input is ever fixed and every other shape
/// inferred from it: exporters declare symbolic shapes (`batch`,
/// `(height+1)/2`) that would not unify with a concrete input.
fn read_onnx(
    path: &Path,
    dir: &ModelDir,
    file: Option<&str>,
) -> Result<InferenceModel, EngineError> {
    let named = file.map_or(String::new(), |file| format!("{file} is "));
    tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(path)
        .map_err(|e| dir.fail(format!("{named}not an ONNX model tract reads: {e:#}")))
}

/// `model` optimized for one RGB image of `height` x `width`, run on
/// `threads` ([`executor`]).
fn plan_for(
    mut model: InferenceModel,
    height: u32,
    width: u32,
    threads: usize,
) -> TractResult<Arc<TypedRunnableModel>> {
    let input = f32::fact([1, 3, height as usize, width as usize]);
    model.set_input_fact(0, input.into())?;
    let options = RunOptions {
        executor: Some(executor(threads)),
        ..Default::default()
    };
    model.into_optimized()?.into_runnable_with_options(&options)
}

/// Run `plan` on one planar image (3 x `height` x `width` floats): its
/// first output's shape and values.
fn run_plan(
    plan: &Arc<TypedRunnableModel>,
    planar: Vec<f32>,
    height: u32,
    width: u32,
) -> TractResult<(Vec<usize>, Vec<f32>)> {
    let shape = [1, 3, height as usize, width as usize];
    let input = Tensor::from_shape(&shape, &planar)?;
    let outputs = plan.run(tvec!(input.into()))?;
    let output = outputs[0].try_as_plain_ram()?;
    Ok((
        outputs[0].shape().to_vec(),
        output.as_slice::<f32>()?.to_vec(),
    ))
}

/// The memory an ONNX model is counted for, beside the engines' workspace:
/// its weights, once per plan a text reader keeps (each plan packs its own
/// copy; a classifier or detector has one plan).
pub fn bytes_in_memory(model: &jetsonmind_store::ModelInfo) -> u64 {
    let reads_text = [ocr::DETECTOR_FILE, ocr::RECOGNIZER_FILE]
        .iter()
        .all(|name| model.files.iter().any(|f| f.path == *name));
    match reads_text {
        true => model.size_bytes * ocr::PLANS_KEPT as u64,
        false => model.size_bytes,
    }
}

/// A single-threaded plan for one thread; a pool of its own for more.
fn executor(threads: usize) -> tract_onnx::prelude::multithread::Executor {
    use tract_onnx::prelude::multithread::{self, Executor};
    match threads {
        0 | 1 => Executor::SingleThread,
        n => {
            // tract's defaults (64 panels, 32768 elements) keep the small
            // products and depthwise layers of mobile networks on one
            // thread; these split them too (measured: bench/vision.py).
            multithread::set_threading_panel_threshold(PANEL_THRESHOLD);
            multithread::set_threading_element_threshold(ELEMENT_THRESHOLD);
            Executor::multithread_with_name(n, "jetsonmind-vision")
        }
    }
}

const PANEL_THRESHOLD: usize = 8;
const ELEMENT_THRESHOLD: usize = 8192;

fn metadata(model: &InferenceModel) -> BTreeMap<String, String> {
    model
        .properties
        .iter()
        .filter_map(|(key, value)| {
            let key = key.strip_prefix("onnx.metadata_props.")?;
            let value = value
                .try_as_plain_ram()
                .ok()?
                .to_scalar::<String>()
                .ok()?
                .clone();
            Some((key.to_string(), value))
        })
        .collect()
}

/// The input's height and width: as declared, or from `imgsz` (`[h, w]` or
/// one side) where the declared input is dynamic.
fn input_size(
    model: &InferenceModel,
    metadata: &BTreeMap<String, String>,
) -> Result<(u32, u32), String> {
    let fact = model
        .input_fact(0)
        .map_err(|e| format!("it has no input: {e}"))?;
    let dims: Option<Vec<usize>> = fact
        .shape
        .dims()
        .map(|d| {
            d.concretize()?
                .as_i64()
                .and_then(|n| usize::try_from(n).ok())
        })
        .collect();
    if let Some([_, 3, h, w]) = dims.as_deref() {
        return Ok((*w as u32, *h as u32));
    }
    let declared = fact.shape.dims().map(|d| d.to_string()).collect::<Vec<_>>();
    if declared.len() != 4 {
        return Err(format!(
            "its input is {declared:?}, not one image [batch, 3, height, width]"
        ));
    }
    if let Some(dims) = declared
        .get(1)
        .filter(|c| c.as_str() != "3" && c.parse::<u32>().is_ok())
    {
        return Err(format!(
            "its input has {dims} channels; image models here take 3 (RGB)"
        ));
    }
    let sides: Vec<u32> = metadata
        .get("imgsz")
        .map(|s| {
            s.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match sides.as_slice() {
        [side] => Ok((*side, *side)),
        [h, w] => Ok((*w, *h)),
        _ => Err(format!(
            "its input {declared:?} has a dynamic size and no `imgsz` metadata says which to use"
        )),
    }
}

/// Class names: the `labels` metadata (a JSON array), Ultralytics' `names`
/// (a Python dict literal, `{0: 'person', 1: 'bicycle'}`), or a
/// `labels.txt` (one per line) or `labels.json` beside the model.
fn labels(network: &Network, dir: &ModelDir) -> Result<Option<Vec<String>>, EngineError> {
    if let Some(json) = network.metadata.get("labels") {
        return serde_json::from_str(json).map(Some).map_err(|e| {
            dir.fail(format!(
                "its labels metadata is not a JSON array of strings: {e}"
            ))
        });
    }
    if let Some(names) = network.metadata.get("names") {
        return python_names(names)
            .map(Some)
            .ok_or_else(|| dir.fail("its names metadata is not a {0: 'name', ...} mapping"));
    }
    if dir.files.contains_key("labels.json") {
        return dir.json("labels.json").map(Some);
    }
    if dir.files.contains_key("labels.txt") {
        let text = String::from_utf8(dir.read("labels.txt")?)
            .map_err(|_| dir.fail("labels.txt is not UTF-8"))?;
        return Ok(Some(text.lines().map(|l| l.trim().to_string()).collect()));
    }
    Ok(None)
}

/// `{0: 'person', 1: "it's"}` as a list by index (keys 0, 1, 2... in
/// order, as Ultralytics writes them); `None` for anything else.
fn python_names(text: &str) -> Option<Vec<String>> {
    let body = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut names = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let (index, after) = rest.split_once(':')?;
        if index.trim().parse::<usize>().ok()? != names.len() {
            return None;
        }
        let after = after.trim_start();
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"')?;
        let end = after[1..].find(quote)? + 1;
        names.push(after[1..end].to_string());
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ultralytics_names() {
        assert_eq!(
            python_names("{0: 'FACE_FEMALE', 1: \"it's\", 2: 'a, b'}").unwrap(),
            ["FACE_FEMALE", "it's", "a, b"]
        );
        assert_eq!(python_names("{}").unwrap(), Vec::<String>::new());
        assert!(python_names("{1: 'x'}").is_none());
        assert!(python_names("[0, 1]").is_none());
        assert!(python_names("{0: x}").is_none());
    }
}
