//! One row of kine's table as an increment carries it: every column as
//! stored, the id kept (`create_revision`, `prev_revision` and the unique index
//! refer to ids).

use serde::{Deserialize, Serialize};

use crate::increment::format::{Change, base64_bytes};

/// One row of kine's table, every column as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KineRow {
    pub id: i64,
    pub name: String,
    pub created: i64,
    pub deleted: i64,
    pub create_revision: i64,
    pub prev_revision: i64,
    pub lease: i64,
    #[serde(with = "base64_bytes")]
    pub value: Option<Vec<u8>>,
    #[serde(with = "base64_bytes")]
    pub old_value: Option<Vec<u8>>,
}

impl Change for KineRow {
    const SHARED_REVISIONS: bool = false;

    fn revision(&self) -> i64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_one_json_line_with_base64_bytes() {
        let row = KineRow {
            id: 11,
            name: "/registry/configmaps/default/c11".into(),
            created: 1,
            deleted: 0,
            create_revision: 0,
            prev_revision: 0,
            lease: 0,
            value: Some(vec![0, 159, 146, 150, b'\n']),
            old_value: None,
        };
        let line = serde_json::to_string(&row).unwrap();
        assert_eq!(
            line,
            r#"{"id":11,"name":"/registry/configmaps/default/c11","created":1,"deleted":0,"create_revision":0,"prev_revision":0,"lease":0,"value":"AJ+Slgo=","old_value":null}"#
        );
        assert_eq!(serde_json::from_str::<KineRow>(&line).unwrap(), row);
    }
}
