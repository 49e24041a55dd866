//! `settings` rows: free-form keys and values, bounded in size.

use super::{
    cells::{arity, text, Cell},
    columns,
};

/// What a settings row must be: a key, and a value of sane length.
pub fn check_setting(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 128 {
        return Err("key must have 1 to 128 bytes".into());
    }
    if value.len() > 4096 {
        return Err("value longer than 4096 bytes".into());
    }
    Ok(())
}

pub(super) fn setting_row(c: &[Cell<'_>]) -> Result<(String, String), String> {
    arity(c, columns::SETTINGS.len())?;
    let key = text(c[0], "key")?;
    let value = text(c[1], "value")?;
    check_setting(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}
