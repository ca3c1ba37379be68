//! A Dockerfile read as instructions and build stages, for the tests that hold the images to
//! their Dockerfiles: `packaging.rs` (what the files copy and run) and the real-node tier (the
//! configuration of the images `hack/build-images.sh` assembled, as the node imported them).
#![allow(dead_code)]

/// One instruction: its keyword and its arguments, continuation lines joined.
#[derive(Debug)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
}

pub fn instructions(text: &str) -> Vec<Instruction> {
    let mut joined = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                joined.push(std::mem::take(&mut current));
            }
        }
    }
    joined
        .into_iter()
        .map(|line| {
            let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
            Instruction { keyword: keyword.to_ascii_uppercase(), args: args.trim().to_string() }
        })
        .collect()
}

/// A build stage: its name (`AS name`) and its instructions.
#[derive(Debug, Default)]
pub struct Stage {
    pub name: Option<String>,
    pub body: Vec<Instruction>,
}

pub fn stages(text: &str) -> Vec<Stage> {
    let mut stages: Vec<Stage> = Vec::new();
    for i in instructions(text) {
        if i.keyword == "FROM" {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_string()),
                _ => None,
            };
            stages.push(Stage { name, body: Vec::new() });
        } else {
            stages.last_mut().expect("an instruction before FROM").body.push(i);
        }
    }
    stages
}

/// `COPY [--from=X] [--chown=..] SRC... DST`: (from, sources, destination).
pub fn copy(args: &str) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut paths = Vec::new();
    for word in args.split_whitespace() {
        if let Some(stage) = word.strip_prefix("--from=") {
            from = Some(stage.to_string());
        } else if !word.starts_with("--") {
            paths.push(word.to_string());
        }
    }
    let destination = paths.pop().expect("COPY has a destination");
    (from, paths, destination)
}

/// The arguments of the last `keyword` instruction of the final stage (what the image keeps).
pub fn final_value(text: &str, keyword: &str) -> Option<String> {
    let stages = stages(text);
    let last = stages.last()?;
    last.body.iter().rev().find(|i| i.keyword == keyword).map(|i| i.args.clone())
}
