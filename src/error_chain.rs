//! One line from an error and its causes. Libraries bury the useful cause
//! (tonic's TLS alert, the SDK's refused connection) under generic wrappers,
//! and `{:#}` repeats messages that already quote their source.

use std::error::Error;

/// The messages of `err` and its causes, joined with ": ". Leaves out empty
/// messages, those in `generic` (wrappers that say nothing, such as
/// "dispatch failure") and those an earlier message already contains.
pub fn flatten(err: &(dyn Error + 'static), generic: &[&str]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = Some(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty()
            && !generic.contains(&text.as_str())
            && !parts.iter().any(|p| p.contains(&text))
        {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl Error for Layer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|l| l as &(dyn Error + 'static))
        }
    }

    fn chain(texts: &[&'static str]) -> Layer {
        let mut layer = None;
        for text in texts.iter().rev() {
            layer = Some(Layer(text, layer.map(Box::new)));
        }
        layer.expect("at least one layer")
    }

    #[test]
    fn joins_causes_without_wrappers_or_repeats() {
        let err = chain(&[
            "dispatch failure",
            "io error: connection refused",
            "",
            "connection refused",
            "os error 111",
        ]);
        assert_eq!(
            flatten(&err, &["dispatch failure"]),
            "io error: connection refused: os error 111"
        );
        assert_eq!(
            flatten(&err, &[]),
            "dispatch failure: io error: connection refused: os error 111"
        );
        assert_eq!(flatten(&chain(&["other"]), &["other"]), "");
    }
}
