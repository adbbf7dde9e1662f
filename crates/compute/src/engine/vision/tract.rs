//! ONNX graphs on tract (pure Rust, in the binary). tract optimizes a graph
//! for one input size, so a [`TractGraph`] keeps a plan per size, the most
//! recently used [`PLANS_KEPT`] of them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::tract_hir::infer::Factoid;

use super::graph::{Dim, Graph, GraphInfo};

/// Plans kept per graph, the least recently used dropped. Each holds its
/// own packed copy of the weights: a model whose pictures come in many
/// sizes (a text reader's) is counted in the memory budget for this many
/// ([`super::bytes_in_memory`]).
pub const PLANS_KEPT: usize = 4;

pub struct TractGraph {
    /// The graph as read, its input not yet fixed.
    model: InferenceModel,
    info: GraphInfo,
    threads: usize,
    /// The most recently used last.
    plans: Mutex<Vec<SizedPlan>>,
}

/// A plan for one (height, width).
type SizedPlan = ((u32, u32), Arc<TypedRunnableModel>);

impl TractGraph {
    /// Read `path`. Only the input is ever fixed and every other shape
    /// inferred from it: exporters declare symbolic shapes (`batch`,
    /// `(height+1)/2`) that would not unify with a concrete input.
    pub fn load(path: &Path, threads: usize) -> Result<Self, String> {
        let model = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(true)
            .model_for_path(path)
            .map_err(|e| format!("not an ONNX model tract reads: {e:#}"))?;
        let info = GraphInfo {
            metadata: metadata(&model),
            input: input_dims(&model)?,
            runs_on: "tract".into(),
        };
        Ok(Self {
            info,
            model,
            threads,
            plans: Mutex::default(),
        })
    }

    /// The plan for one RGB image of `height` x `width`: kept, or made now.
    fn plan(&self, height: u32, width: u32) -> TractResult<Arc<TypedRunnableModel>> {
        let size = (height, width);
        let mut plans = self.plans.lock().expect("plans lock");
        if let Some(at) = plans.iter().position(|(s, _)| *s == size) {
            let kept = plans.remove(at);
            plans.push(kept.clone());
            return Ok(kept.1);
        }
        drop(plans);
        let plan = plan_for(self.model.clone(), height, width, self.threads)?;
        let mut plans = self.plans.lock().expect("plans lock");
        if plans.len() == PLANS_KEPT {
            plans.remove(0);
        }
        plans.push((size, plan.clone()));
        Ok(plan)
    }
}

impl Graph for TractGraph {
    fn info(&self) -> &GraphInfo {
        &self.info
    }

    fn run(
        &self,
        planar: Vec<f32>,
        height: u32,
        width: u32,
    ) -> Result<(Vec<usize>, Vec<f32>), String> {
        let run = || {
            let plan = self.plan(height, width)?;
            let shape = [1, 3, height as usize, width as usize];
            let input = Tensor::from_shape(&shape, &planar)?;
            let outputs = plan.run(tvec!(input.into()))?;
            let output = outputs[0].try_as_plain_ram()?;
            TractResult::Ok((
                outputs[0].shape().to_vec(),
                output.as_slice::<f32>()?.to_vec(),
            ))
        };
        run().map_err(|e| format!("{e:#}"))
    }
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

fn input_dims(model: &InferenceModel) -> Result<Vec<Dim>, String> {
    let fact = model
        .input_fact(0)
        .map_err(|e| format!("it has no input: {e}"))?;
    Ok(fact
        .shape
        .dims()
        .map(|d| Dim {
            size: d
                .concretize()
                .and_then(|d| d.as_i64())
                .and_then(|n| usize::try_from(n).ok()),
            name: d.to_string(),
        })
        .collect())
}
