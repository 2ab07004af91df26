//! The shape of the code, checked over its `use` lines against `docs/code-map.md`: every module
//! imports only modules of the layers below its own, no files import each other round a circle,
//! every file of `src/` says what it owns in a module doc comment, and the code map names every
//! file there is and no other.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use libtest_mimic::{Failed, Trial};

pub fn tests() -> Vec<Trial> {
    vec![
        Trial::test("layers::imports_run_only_down_the_layers", imports_run_only_down_the_layers),
        Trial::test("layers::no_files_import_each_other_round_a_circle", no_files_import_each_other_round_a_circle),
        Trial::test("layers::every_file_says_what_it_owns", every_file_says_what_it_owns),
        Trial::test("layers::the_code_map_names_every_file", the_code_map_names_every_file),
    ]
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn code_map() -> String {
    fs::read_to_string(root().join("docs/code-map.md")).expect("docs/code-map.md is readable")
}

/// The layers, top first, from the `layers` block of the code map: one line a layer, the
/// top-level modules on it separated by spaces.
fn layers() -> Vec<Vec<String>> {
    let map = code_map();
    let block = map.split("```layers\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a layers block");
    block
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// A file of `src/` and the module path it holds (`api::json::routes`; the binary's files under
/// `main`).
struct Source {
    path: String,
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    let mut files = Vec::new();
    collect(&root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let path = file.strip_prefix(root()).unwrap().to_string_lossy().replace('\\', "/");
            let relative = path.strip_prefix("src/").unwrap().strip_suffix(".rs").unwrap();
            let mut module: Vec<String> = relative.split('/').map(str::to_owned).collect();
            if matches!(module.last().map(String::as_str), Some("mod" | "lib")) {
                module.pop();
            }
            // The binary's files (main.rs, commands/) form a crate of their own above the library.
            if module.first().is_some_and(|first| first == "commands") {
                module.insert(0, "main".to_owned());
            }
            let text = fs::read_to_string(&file).unwrap();
            // Unit tests are not part of the structure: their `super` is the file itself.
            let text = strip_comments(text.split("#[cfg(test)]").next().unwrap_or_default());
            Source { path, module, text }
        })
        .collect()
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The text without `//` comments, so a path named in a doc comment is no import.
fn strip_comments(text: &str) -> String {
    text.lines().map(|line| line.split("//").next().unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Every module path a file names: each `use` of `crate::`, `super::` or `personal_clients::`
/// (braces expanded), and each such path written inline. A `pub use` of a file's own submodule
/// is left out: a parent naming its child's items is an index, not a dependency.
fn imports(source: &Source) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut lines = source.text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim_start();
        let (public, statement) = match line.split_once("use ") {
            Some(("", rest)) => (false, rest),
            Some(("pub " | "pub(crate) " | "pub(super) ", rest)) => (true, rest),
            _ => continue,
        };
        let mut statement = statement.to_owned();
        while !statement.contains(';') {
            let Some(next) = lines.next() else { break };
            statement.push_str(next);
        }
        let statement: String = statement.split(';').next().unwrap_or_default().split_whitespace().collect();
        for path in expand("", &statement) {
            let segments: Vec<String> = path.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            if public && segments.first().is_some_and(|first| declares(&source.text, first)) {
                continue;
            }
            paths.extend(resolve(source, &segments));
        }
    }
    for prefix in ["crate::", "personal_clients::"] {
        for (at, _) in source.text.match_indices(prefix) {
            if source.text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let tail: String =
                source.text[at..].chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
            let segments: Vec<String> = tail.split("::").filter(|s| !s.is_empty()).map(str::to_owned).collect();
            paths.extend(resolve(source, &segments));
        }
    }
    paths
}

/// `a::{b, c::{d, e}}` as `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &str, tree: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (tree.find('{'), tree.rfind('}')) else { return vec![format!("{prefix}{tree}")] };
    if close < open {
        return Vec::new();
    }
    let (head, inner) = (&tree[..open], &tree[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|part| !part.is_empty())
        .flat_map(|part| expand(&format!("{prefix}{head}"), part))
        .collect()
}

/// A path as the library module it names (`["error", "answers"]`), if it names one: from the
/// crate root, from the parent (`super::`), or from a submodule the file declares.
fn resolve(source: &Source, segments: &[String]) -> Option<Vec<String>> {
    let (first, rest) = segments.split_first()?;
    let in_binary = source.module.first().is_some_and(|first| first == "main");
    let absolute: Vec<String> = match first.as_str() {
        "crate" if !in_binary => rest.to_vec(),
        "personal_clients" => rest.to_vec(),
        "super" if !in_binary => {
            let mut module = source.module.clone();
            module.pop();
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                module.pop();
                rest = &rest[1..];
            }
            module.extend(rest.iter().cloned());
            module
        }
        child if !in_binary && declares(&source.text, child) => {
            let mut module = source.module.clone();
            module.extend(segments.iter().cloned());
            module
        }
        _ => return None,
    };
    let absolute: Vec<String> = absolute.into_iter().filter(|s| s != "self" && s != "*").collect();
    (!absolute.is_empty()).then_some(absolute)
}

/// Whether `text` declares a submodule `name` (`mod name;`, `pub mod name;`).
fn declares(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let line = line.trim();
        let line = line.strip_prefix("pub ").or_else(|| line.strip_prefix("pub(crate) ")).unwrap_or(line);
        line.strip_prefix("mod ").and_then(|rest| rest.strip_suffix(';')) == Some(name)
    })
}

/// The file holding the longest module prefix of `path`.
fn file_of<'a>(files: &'a BTreeMap<Vec<String>, String>, path: &[String]) -> Option<&'a String> {
    (1..=path.len()).rev().find_map(|n| files.get(&path[..n]))
}

fn imports_run_only_down_the_layers() -> Result<(), Failed> {
    let layers = layers();
    let layer_of = |module: &str| layers.iter().position(|layer| layer.iter().any(|m| m == module));
    let mut broken = Vec::new();
    for source in sources() {
        let Some(own) = source.module.first() else { continue };
        let Some(own_layer) = layer_of(own) else {
            broken.push(format!("{}: module {own} is on no layer of docs/code-map.md", source.path));
            continue;
        };
        for import in imports(&source) {
            let target = &import[0];
            if target == own {
                continue;
            }
            match layer_of(target) {
                Some(layer) if layer > own_layer => {}
                Some(_) => broken.push(format!(
                    "{}: {own} imports {}, which is not on a layer below it",
                    source.path,
                    import.join("::")
                )),
                None => {
                    broken.push(format!("{}: {} is on no layer of docs/code-map.md", source.path, import.join("::")))
                }
            }
        }
    }
    broken.sort();
    broken.dedup();
    if broken.is_empty() { Ok(()) } else { Err(broken.join("\n").into()) }
}

fn no_files_import_each_other_round_a_circle() -> Result<(), Failed> {
    let sources = sources();
    let files: BTreeMap<Vec<String>, String> = sources
        .iter()
        .filter(|source| source.module.first().is_none_or(|first| first != "main"))
        .map(|source| (source.module.clone(), source.path.clone()))
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        for import in imports(source) {
            if let Some(target) = file_of(&files, &import).filter(|target| **target != source.path) {
                edges.entry(source.path.clone()).or_default().insert(target.clone());
            }
        }
    }
    // A depth-first search; a back edge closes a circle.
    let mut circles = Vec::new();
    let mut state: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        file: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
        circles: &mut Vec<String>,
    ) {
        state.insert(file, 1);
        stack.push(file);
        for next in edges.get(file).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let from = stack.iter().position(|f| *f == next).unwrap_or(0);
                    circles.push(format!("{} -> {next}", stack[from..].join(" -> ")));
                }
                Some(_) => {}
                None => visit(next, edges, state, stack, circles),
            }
        }
        stack.pop();
        state.insert(file, 2);
    }
    for file in files.values() {
        if !state.contains_key(file.as_str()) {
            visit(file, &edges, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    if circles.is_empty() {
        Ok(())
    } else {
        Err(format!("files that import each other:\n{}", circles.join("\n")).into())
    }
}

fn every_file_says_what_it_owns() -> Result<(), Failed> {
    let mut silent = Vec::new();
    for source in sources() {
        // Migrations that have landed are never edited; each is named by what it does.
        if source.path.starts_with("src/store/migration/m") {
            continue;
        }
        let text = fs::read_to_string(root().join(&source.path)).unwrap();
        if !text.starts_with("//! ") {
            silent.push(source.path);
        }
    }
    if silent.is_empty() { Ok(()) } else { Err(format!("no module doc comment first: {}", silent.join(", ")).into()) }
}

fn the_code_map_names_every_file() -> Result<(), Failed> {
    let map = code_map();
    // The first cell of each row of the tables: `src/...`, a file or a folder.
    let named: BTreeSet<String> = map
        .lines()
        .filter_map(|line| line.strip_prefix("| `src/"))
        .filter_map(|rest| rest.split('`').next())
        .map(|path| format!("src/{path}"))
        .collect();
    let mut problems = Vec::new();
    for source in sources() {
        let covered = named
            .iter()
            .any(|name| *name == source.path || (name.ends_with('/') && source.path.starts_with(name.as_str())));
        if !covered {
            problems.push(format!("{} is not in docs/code-map.md", source.path));
        }
    }
    for name in &named {
        if !root().join(name).exists() {
            problems.push(format!("docs/code-map.md names {name}, which does not exist"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("\n").into()) }
}
