//! Image models in ONNX: a classifier or a YOLO-layout detector, told apart
//! by the model's own metadata (`task`, as Ultralytics and our converter
//! write it) or, without it, by its output's shape; or a text reader (a
//! directory of two networks). ONNX Runtime or tract runs the networks
//! ([`graph`]); the engines here do the rest (preprocessing, decoding).
//!
//! Each call runs on the runtime's own threads (`compute.vision.threads`),
//! so image calls never queue behind the pool llama.cpp or candle use.

mod classify;
mod detect;
mod graph;
mod ocr;
mod onnxruntime;
mod tract;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::image::{ImageEngine, ImageTask};
use super::{EngineError, ModelDir, ModelInfo};

pub use classify::Classifier;
pub use detect::Detector;
pub use graph::Runtime;
pub use ocr::TextReader;

use graph::{Dim, Graph};

/// An ONNX image model that takes one input size.
struct Network {
    graph: Box<dyn Graph>,
    /// Width and height the network takes.
    width: u32,
    height: u32,
    /// The output's shape for one image.
    output_shape: Vec<usize>,
}

impl Network {
    /// Load `path`, its input one RGB image of the size its declared input
    /// (or its `imgsz` metadata, for dynamic ones) says, and run it once on
    /// a blank one: a model the runtime cannot run fails its load, not a
    /// call, and its output's shape is known.
    fn load(path: &Path, dir: &ModelDir, runtime: &Runtime) -> Result<Self, EngineError> {
        let graph = runtime.load(path).map_err(|e| dir.fail(e))?;
        let (width, height) =
            input_size(&graph.info().input, &graph.info().metadata).map_err(|e| dir.fail(e))?;
        let output_shape = graph.output_shape_at(height, width).map_err(|e| {
            dir.fail(format!(
                "it does not run on a {width}x{height} picture: {e}"
            ))
        })?;
        Ok(Self {
            graph,
            width,
            height,
            output_shape,
        })
    }

    fn metadata(&self) -> &BTreeMap<String, String> {
        &self.graph.info().metadata
    }

    /// Run on one image, already planar (3 x height x width floats): the
    /// first output's values.
    fn run(&self, planar: Vec<f32>) -> Result<Vec<f32>, EngineError> {
        self.graph
            .run(planar, self.height, self.width)
            .map(|(_, values)| values)
            .map_err(EngineError::Inference)
    }

    fn task(&self) -> Option<ImageTask> {
        match self.metadata().get("task").map(String::as_str) {
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
    runtime: &Runtime,
) -> Result<Arc<dyn ImageEngine>, EngineError> {
    if [ocr::DETECTOR_FILE, ocr::RECOGNIZER_FILE]
        .iter()
        .all(|f| dir.files.contains_key(*f))
    {
        return Ok(Arc::new(TextReader::load(dir, runtime)?));
    }
    let network = Network::load(path, dir, runtime)?;
    let size_bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    let runs_on = network.graph.info().runs_on.clone();
    let info = |architecture: &str| ModelInfo {
        id: dir.id.to_string(),
        architecture: Some(format!("{architecture} on {runs_on}")),
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
            network.metadata().get("task"),
            network.output_shape
        ))),
    }
}

/// The memory an ONNX model is counted for, beside the engines' workspace:
/// its weights, for a text reader once per plan tract keeps (each packs its
/// own copy; ONNX Runtime keeps one, but the count stays on the safe side
/// whichever runtime loads it); a classifier or detector runs at one size.
pub fn bytes_in_memory(model: &jetsonmind_store::ModelInfo) -> u64 {
    let reads_text = [ocr::DETECTOR_FILE, ocr::RECOGNIZER_FILE]
        .iter()
        .all(|name| model.files.iter().any(|f| f.path == *name));
    match reads_text {
        true => model.size_bytes * tract::PLANS_KEPT as u64,
        false => model.size_bytes,
    }
}

/// The input's height and width: as declared, or from `imgsz` (`[h, w]` or
/// one side) where the declared input is dynamic.
fn input_size(dims: &[Dim], metadata: &BTreeMap<String, String>) -> Result<(u32, u32), String> {
    if let [
        _,
        Dim { size: Some(3), .. },
        Dim { size: Some(h), .. },
        Dim { size: Some(w), .. },
    ] = dims
    {
        return Ok((*w as u32, *h as u32));
    }
    let declared: Vec<&str> = dims.iter().map(|d| d.name.as_str()).collect();
    if declared.len() != 4 {
        return Err(format!(
            "its input is {declared:?}, not one image [batch, 3, height, width]"
        ));
    }
    if let Some(dims) = declared
        .get(1)
        .filter(|c| **c != "3" && c.parse::<u32>().is_ok())
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
    if let Some(json) = network.metadata().get("labels") {
        return serde_json::from_str(json).map(Some).map_err(|e| {
            dir.fail(format!(
                "its labels metadata is not a JSON array of strings: {e}"
            ))
        });
    }
    if let Some(names) = network.metadata().get("names") {
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

    fn dims(declared: &[&str]) -> Vec<Dim> {
        declared
            .iter()
            .map(|d| Dim {
                size: d.parse().ok(),
                name: d.to_string(),
            })
            .collect()
    }

    #[test]
    fn the_input_size_is_declared_or_named_by_imgsz() {
        let none = BTreeMap::new();
        assert_eq!(
            input_size(&dims(&["1", "3", "224", "320"]), &none),
            Ok((320, 224))
        );
        // A dynamic batch does not make a fixed picture size dynamic.
        assert_eq!(
            input_size(&dims(&["batch", "3", "640", "640"]), &none),
            Ok((640, 640))
        );
        let imgsz = BTreeMap::from([("imgsz".to_string(), "[480, 640]".to_string())]);
        assert_eq!(
            input_size(&dims(&["batch", "3", "h", "w"]), &imgsz),
            Ok((640, 480))
        );
        let error = input_size(&dims(&["batch", "3", "h", "w"]), &none).unwrap_err();
        assert!(error.contains("dynamic size and no `imgsz`"), "{error}");
        let error = input_size(&dims(&["1", "1", "28", "28"]), &none).unwrap_err();
        assert!(error.contains("has 1 channels"), "{error}");
        let error = input_size(&dims(&["1", "784"]), &none).unwrap_err();
        assert!(error.contains("not one image"), "{error}");
    }

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
