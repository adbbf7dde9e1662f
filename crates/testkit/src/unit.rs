//! Fake MCP units for tests: a catalog and how calls and reads are answered,
//! built in a few lines instead of a hand-written `McpUnit` per test.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rmcp::ErrorData as McpError;
use rmcp::model::{CallToolResult, ReadResourceResult, Resource, Tool};

use jetsonmind_core::auth::Principal;
use jetsonmind_core::subscribe::ListChanges;
use jetsonmind_core::{Catalog, McpUnit, ResourceUpdates, ToolCall, UnitIdentity, tool_from};

type Answered = Pin<Box<dyn Future<Output = Result<CallToolResult, McpError>> + Send>>;
type Answer = Box<dyn Fn(ToolCall) -> Answered + Send + Sync>;
type Read = Box<dyn Fn(&str) -> Result<ReadResourceResult, McpError> + Send + Sync>;

/// A unit that offers the tools and resources it was built with and answers
/// as its closures say. It counts how often its catalog is listed.
pub struct FakeUnit {
    name: &'static str,
    catalog: Arc<Catalog>,
    answer: Answer,
    read: Option<Read>,
    updates: Option<Arc<ResourceUpdates>>,
    list_changes: Option<Arc<ListChanges>>,
    listed: AtomicUsize,
}

impl FakeUnit {
    /// A unit called `name`, to be given its tools, resources and answers.
    pub fn named(name: &'static str) -> FakeUnitBuilder {
        FakeUnitBuilder {
            name,
            tools: Vec::new(),
            resources: Vec::new(),
            answer: Box::new(|_| Box::pin(async { Ok(CallToolResult::success(vec![])) })),
            read: None,
            updates: None,
            list_changes: None,
        }
    }

    /// How many times a client (or the server for it) has asked for the catalog.
    pub fn times_listed(&self) -> usize {
        self.listed.load(Ordering::SeqCst)
    }
}

/// Builds a [`FakeUnit`]: no tools, no resources and an empty success for
/// every call unless told otherwise.
pub struct FakeUnitBuilder {
    name: &'static str,
    tools: Vec<Tool>,
    resources: Vec<Resource>,
    answer: Answer,
    read: Option<Read>,
    updates: Option<Arc<ResourceUpdates>>,
    list_changes: Option<Arc<ListChanges>>,
}

impl FakeUnitBuilder {
    /// Offer `tool`.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.tools.push(tool);
        self
    }

    /// Offer a tool `name` taking the arguments `A`.
    pub fn tool_of<A: schemars::JsonSchema + 'static>(
        self,
        name: &'static str,
        about: &'static str,
    ) -> Self {
        self.tool(tool_from::<A>(name, about))
    }

    /// Offer the resource at `uri`.
    pub fn resource(mut self, uri: &str, name: &str) -> Self {
        self.resources.push(Resource::new(uri, name));
        self
    }

    /// Answer every tool call with `answer`.
    pub fn answers<F, Fut>(mut self, answer: F) -> Self
    where
        F: Fn(ToolCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<CallToolResult, McpError>> + Send + 'static,
    {
        self.answer = Box::new(move |call| Box::pin(answer(call)));
        self
    }

    /// Answer every resource read with `read` (by default none is found).
    pub fn reads<F>(mut self, read: F) -> Self
    where
        F: Fn(&str) -> Result<ReadResourceResult, McpError> + Send + Sync + 'static,
    {
        self.read = Some(Box::new(read));
        self
    }

    /// Announce resource changes through `updates`, so clients can subscribe.
    pub fn announcing(mut self, updates: Arc<ResourceUpdates>) -> Self {
        self.updates = Some(updates);
        self
    }

    /// Say through `changes` when the lists change.
    pub fn with_list_changes(mut self, changes: Arc<ListChanges>) -> Self {
        self.list_changes = Some(changes);
        self
    }

    pub fn build(self) -> Arc<FakeUnit> {
        let catalog = Catalog::new(self.tools, self.resources, vec![]).expect("a valid catalog");
        Arc::new(FakeUnit {
            name: self.name,
            catalog: Arc::new(catalog),
            answer: self.answer,
            read: self.read,
            updates: self.updates,
            list_changes: self.list_changes,
            listed: AtomicUsize::new(0),
        })
    }
}

impl McpUnit for FakeUnit {
    fn identity(&self) -> UnitIdentity {
        UnitIdentity {
            name: self.name,
            title: self.name,
            instructions: "test unit",
        }
    }

    fn catalog(&self) -> Arc<Catalog> {
        self.listed.fetch_add(1, Ordering::SeqCst);
        self.catalog.clone()
    }

    fn call_tool(
        &self,
        call: ToolCall,
    ) -> impl Future<Output = Result<CallToolResult, McpError>> + Send {
        (self.answer)(call)
    }

    async fn read_resource(
        &self,
        uri: &str,
        _caller: &Principal,
    ) -> Result<ReadResourceResult, McpError> {
        match &self.read {
            Some(read) => read(uri),
            None => Err(jetsonmind_core::error::no_resource_at(uri)),
        }
    }

    fn updates(&self) -> Option<Arc<ResourceUpdates>> {
        self.updates.clone()
    }

    fn list_changes(&self) -> Option<Arc<ListChanges>> {
        self.list_changes.clone()
    }
}

#[derive(schemars::JsonSchema, serde::Deserialize)]
struct NoArgs {}

/// A unit whose tool `chat` logs at several levels while it runs: under
/// JetsonMind's targets (debug "looking around", warn "memory is low" with
/// `free_bytes = 42`, error "the fan stopped") and once under another crate's.
pub fn chatty() -> Arc<FakeUnit> {
    FakeUnit::named("chatty")
        .tool_of::<NoArgs>("chat", "logs while it runs")
        .answers(|_| async {
            tracing::debug!(target: "jetsonmind_test", step = 1, "looking around");
            tracing::warn!(target: "jetsonmind_test", free_bytes = 42u64, "memory is low");
            tracing::error!(target: "jetsonmind_test", "the fan stopped");
            tracing::error!(target: "other_crate", "not ours: never sent");
            Ok(CallToolResult::success(vec![]))
        })
        .build()
}
