//! The merged view: every backend's tools, resources and templates under
//! one catalog, with the routes back to where each one came from.
//!
//! Naming is deterministic: it depends on the set of live backends and the
//! prefix mode, not on the order in which backends answered.

use std::collections::HashMap;
use std::sync::Arc;

use jetsonmind_core::rmcp::model::{Prompt, Tool};
use jetsonmind_core::{Catalog, CoreError};

pub use jetsonmind_core::upstream::Offer;

use crate::config::PrefixMode;

/// Where an exposed name leads: a backend index and the backend's own name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub backend: usize,
    pub original: String,
}

pub struct View {
    pub catalog: Arc<Catalog>,
    pub tools: HashMap<String, Route>,
    pub resources: HashMap<String, Route>,
    /// (exposed template, route to the backend's template), in catalog order.
    pub templates: Vec<(String, Route)>,
    /// Named like tools (a prompt of another backend never hides a tool's
    /// name, but the two lists are separate in MCP).
    pub prompts: Vec<Prompt>,
    pub prompt_routes: HashMap<String, Route>,
}

pub struct Naming<'a> {
    pub mode: PrefixMode,
    pub separator: &'a str,
}

impl Naming<'_> {
    fn tool(&self, backend: &str, name: &str) -> String {
        format!("{backend}{}{name}", self.separator)
    }

    /// `node1+jetson://system/metrics`: a valid URI (scheme `node1+jetson`)
    /// that keeps the original visible and is undone by stripping `node1+`.
    fn uri(&self, backend: &str, uri: &str) -> String {
        format!("{backend}+{uri}")
    }
}

impl View {
    /// Merge `own` tools (never prefixed) with each live backend's offer.
    /// `offers` holds `(backend index, backend name, offer)`.
    pub fn merge(
        own: &[Tool],
        offers: &[(usize, &str, &Offer)],
        naming: &Naming,
    ) -> Result<View, CoreError> {
        let mut tools: Vec<Tool> = own.to_vec();
        let mut tool_routes = HashMap::new();
        let taken_by_own: Vec<String> = own.iter().map(|t| t.name.to_string()).collect();
        let tool_items = offers
            .iter()
            .flat_map(|(i, b, o)| o.tools.iter().map(move |t| (*i, *b, t.name.to_string(), t)));
        for (exposed, route, tool) in
            name_all(tool_items, &taken_by_own, naming, |n, b, x| n.tool(b, x))
        {
            let mut tool = tool.clone();
            tool.name = exposed.clone().into();
            tools.push(tool);
            tool_routes.insert(exposed, route);
        }

        let mut resources = Vec::new();
        let mut resource_routes = HashMap::new();
        let resource_items = offers
            .iter()
            .flat_map(|(i, b, o)| o.resources.iter().map(move |r| (*i, *b, r.uri.clone(), r)));
        for (exposed, route, resource) in
            name_all(resource_items, &[], naming, |n, b, x| n.uri(b, x))
        {
            let mut resource = resource.clone();
            resource.uri = exposed.clone();
            resources.push(resource);
            resource_routes.insert(exposed, route);
        }

        let mut templates = Vec::new();
        let mut template_routes = Vec::new();
        let template_items = offers.iter().flat_map(|(i, b, o)| {
            o.templates
                .iter()
                .map(move |t| (*i, *b, t.uri_template.clone(), t))
        });
        for (exposed, route, template) in
            name_all(template_items, &[], naming, |n, b, x| n.uri(b, x))
        {
            let mut template = template.clone();
            template.uri_template = exposed.clone();
            templates.push(template);
            template_routes.push((exposed, route));
        }

        let (prompts, prompt_routes) = merge_prompts(offers, naming);
        Ok(View {
            catalog: Arc::new(Catalog::new(tools, resources, templates)?),
            tools: tool_routes,
            resources: resource_routes,
            templates: template_routes,
            prompts,
            prompt_routes,
        })
    }

    /// The backend and original template of an exposed template (as a
    /// completion names it).
    pub fn template_route(&self, exposed: &str) -> Option<Route> {
        self.templates
            .iter()
            .find(|(template, _)| template == exposed)
            .map(|(_, route)| route.clone())
    }

    /// The backend and original URI for a resource read, exact URIs first,
    /// then templates.
    pub fn resource_route(&self, uri: &str) -> Option<Route> {
        if let Some(route) = self.resources.get(uri) {
            return Some(route.clone());
        }
        self.templates
            .iter()
            .find(|(template, _)| template_matches(template, uri))
            .map(|(template, route)| {
                // The exposed template differs from the original only by a
                // leading `backend+`, so the same strip maps the URI back.
                let added = template.len() - route.original.len();
                Route {
                    backend: route.backend,
                    original: uri[added..].to_string(),
                }
            })
    }
}

fn merge_prompts(
    offers: &[(usize, &str, &Offer)],
    naming: &Naming,
) -> (Vec<Prompt>, HashMap<String, Route>) {
    let items = offers
        .iter()
        .flat_map(|(i, b, o)| o.prompts.iter().map(move |p| (*i, *b, p.name.clone(), p)));
    let mut prompts = Vec::new();
    let mut routes = HashMap::new();
    for (exposed, route, prompt) in name_all(items, &[], naming, |n, b, x| n.tool(b, x)) {
        let mut prompt = prompt.clone();
        prompt.name = exposed.clone();
        prompts.push(prompt);
        routes.insert(exposed, route);
    }
    (prompts, routes)
}

/// Name every item: keep its own name unless the prefix mode or a collision
/// (with another backend or with `reserved` names) says otherwise.
fn name_all<'a, T>(
    items: impl Iterator<Item = (usize, &'a str, String, &'a T)>,
    reserved: &[String],
    naming: &Naming,
    prefixed: impl Fn(&Naming, &str, &str) -> String,
) -> Vec<(String, Route, &'a T)> {
    let items: Vec<_> = items.collect();
    let mut owners: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, _, name, _) in &items {
        let backends = owners.entry(name.as_str()).or_default();
        if !backends.contains(index) {
            backends.push(*index);
        }
    }
    let collides = |name: &str| reserved.iter().any(|r| r == name) || owners[name].len() > 1;
    let mut seen = std::collections::HashSet::new();
    let mut named = Vec::new();
    for (index, backend, name, item) in &items {
        let exposed = match naming.mode {
            PrefixMode::Always => prefixed(naming, backend, name),
            PrefixMode::Collisions if collides(name) => prefixed(naming, backend, name),
            PrefixMode::Collisions | PrefixMode::Never => name.clone(),
        };
        // `Never` (or a backend listing a name twice): the first one wins.
        if reserved.contains(&exposed) || !seen.insert(exposed.clone()) {
            tracing::warn!(name = %exposed, backend, "name already taken in the merged view; skipped");
            continue;
        }
        named.push((
            exposed,
            Route {
                backend: *index,
                original: name.clone(),
            },
            *item,
        ));
    }
    named
}

/// RFC 6570 level-1 match: the literal parts of `template` appear in order
/// in `uri`, the first as a prefix and the last as a suffix.
pub fn template_matches(template: &str, uri: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        literals.push(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => rest = &rest[open + close + 1..],
            None => return false,
        }
    }
    let has_variable = !literals.is_empty();
    literals.push(rest);
    if !has_variable {
        return template == uri;
    }
    let (first, last) = (literals[0], literals[literals.len() - 1]);
    if !uri.starts_with(first) || !uri.ends_with(last) || uri.len() < first.len() + last.len() {
        return false;
    }
    let mut middle = &uri[first.len()..uri.len() - last.len()];
    for literal in &literals[1..literals.len() - 1] {
        match middle.find(literal) {
            Some(at) if at > 0 => middle = &middle[at + literal.len()..],
            _ => return false,
        }
    }
    !middle.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jetsonmind_core::rmcp::model::{Resource, ResourceTemplate};
    use serde_json::json;

    fn tool(name: &'static str) -> Tool {
        let schema = json!({"type": "object"}).as_object().unwrap().clone();
        Tool::new(name, "d", Arc::new(schema))
    }

    fn offer(tools: &[&'static str], uris: &[&str], templates: &[&str]) -> Offer {
        Offer {
            tools: tools.iter().map(|t| tool(t)).collect(),
            resources: uris.iter().map(|u| Resource::new(*u, "r")).collect(),
            templates: templates
                .iter()
                .map(|t| ResourceTemplate::new(*t, "t"))
                .collect(),
            prompts: Vec::new(),
        }
    }

    fn names(view: &View) -> Vec<String> {
        let mut names: Vec<_> = view
            .catalog
            .tools()
            .iter()
            .map(|t| t.name.to_string())
            .collect();
        names.sort();
        names
    }

    const COLLISIONS: Naming = Naming {
        mode: PrefixMode::Collisions,
        separator: "_",
    };

    #[test]
    fn only_colliding_names_are_prefixed() {
        let a = offer(
            &["text_generate", "shared"],
            &["jetson://system/metrics"],
            &[],
        );
        let b = offer(&["route_request", "shared"], &["jetson://other"], &[]);
        let view = View::merge(
            &[tool("manage_connections")],
            &[(0, "compute", &a), (1, "control", &b)],
            &COLLISIONS,
        )
        .unwrap();
        assert_eq!(
            names(&view),
            vec![
                "compute_shared",
                "control_shared",
                "manage_connections",
                "route_request",
                "text_generate"
            ]
        );
        assert_eq!(
            view.tools["control_shared"],
            Route {
                backend: 1,
                original: "shared".into()
            }
        );
        assert_eq!(view.resources["jetson://system/metrics"].backend, 0);
    }

    #[test]
    fn colliding_uris_get_a_backend_scheme_prefix() {
        let a = offer(
            &[],
            &["jetson://system/metrics"],
            &["jetson://models/{name}"],
        );
        let view = View::merge(&[], &[(0, "node1", &a), (1, "node2", &a)], &COLLISIONS).unwrap();
        let route = view
            .resource_route("node2+jetson://system/metrics")
            .unwrap();
        assert_eq!(
            route,
            Route {
                backend: 1,
                original: "jetson://system/metrics".into()
            }
        );
        let route = view
            .resource_route("node1+jetson://models/smol.gguf")
            .unwrap();
        assert_eq!(
            route,
            Route {
                backend: 0,
                original: "jetson://models/smol.gguf".into()
            }
        );
        assert!(view.resource_route("jetson://system/metrics").is_none());
    }

    #[test]
    fn own_tools_win_and_never_mode_keeps_the_first() {
        let a = offer(&["manage_connections", "x"], &[], &[]);
        let b = offer(&["x"], &[], &[]);
        let never = Naming {
            mode: PrefixMode::Never,
            separator: "_",
        };
        let view = View::merge(
            &[tool("manage_connections")],
            &[(0, "a", &a), (1, "b", &b)],
            &never,
        )
        .unwrap();
        assert_eq!(names(&view), vec!["manage_connections", "x"]);
        assert_eq!(view.tools["x"].backend, 0);
        assert!(!view.tools.contains_key("manage_connections"));
        let view =
            View::merge(&[tool("manage_connections")], &[(0, "a", &a)], &COLLISIONS).unwrap();
        assert_eq!(
            view.tools["a_manage_connections"].original,
            "manage_connections"
        );
    }

    #[test]
    fn always_mode_prefixes_everything() {
        let a = offer(&["t"], &["u://x"], &[]);
        let always = Naming {
            mode: PrefixMode::Always,
            separator: ".",
        };
        let view = View::merge(&[], &[(0, "n", &a)], &always).unwrap();
        assert_eq!(names(&view), vec!["n.t"]);
        assert!(view.resources.contains_key("n+u://x"));
    }

    #[test]
    fn prompts_are_named_like_tools_and_route_back() {
        let prompt = |name: &str| Prompt::new(name, None::<String>, None);
        let mut compute = offer(&[], &[], &[]);
        compute.prompts = vec![prompt("summarize"), prompt("shared")];
        let mut data = offer(&[], &[], &["jetson://models/{name}"]);
        data.prompts = vec![prompt("shared")];
        let collisions = Naming {
            mode: PrefixMode::Collisions,
            separator: "_",
        };
        let view = View::merge(
            &[],
            &[(0, "compute", &compute), (1, "data", &data)],
            &collisions,
        )
        .unwrap();
        let mut names: Vec<_> = view.prompts.iter().map(|p| p.name.clone()).collect();
        names.sort();
        assert_eq!(names, vec!["compute_shared", "data_shared", "summarize"]);
        assert_eq!(
            view.prompt_routes["data_shared"],
            Route {
                backend: 1,
                original: "shared".into()
            }
        );
        assert_eq!(view.prompt_routes["summarize"].backend, 0);
        let template = view.template_route("jetson://models/{name}").unwrap();
        assert_eq!(
            template,
            Route {
                backend: 1,
                original: "jetson://models/{name}".into()
            }
        );
        assert_eq!(view.template_route("jetson://models/x"), None);
    }

    #[test]
    fn templates_match_level_one_expressions() {
        assert!(template_matches(
            "jetson://models/{name}",
            "jetson://models/a.gguf"
        ));
        assert!(!template_matches(
            "jetson://models/{name}",
            "jetson://models/"
        ));
        assert!(template_matches("x://{a}/y/{b}.json", "x://1/y/2.json"));
        assert!(!template_matches("x://{a}/y/{b}.json", "x://1/z/2.json"));
        assert!(template_matches("plain://uri", "plain://uri"));
    }
}
