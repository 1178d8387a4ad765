//! Output shapes: kubectl/calicoctl `get` columns, calicoctl's boxed tables (`node status`,
//! `ipam show`), and documents as YAML or JSON.

use serde_json::Value;

/// Columns padded to the widest cell plus three spaces, as calicoctl's tabwriter prints them.
pub fn columns(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(c);
            if i + 1 < cells.len() {
                l.push_str(&" ".repeat(w[i] - c.chars().count() + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A boxed table as calicoctl (olekukonko/tablewriter) prints it: upper-case headers centred,
/// numbers right-aligned, everything else left-aligned.
pub fn boxed(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(x) = w.get_mut(i) {
                *x = (*x).max(c.chars().count());
            }
        }
    }
    let rule: String = {
        let mut s = String::from("+");
        for x in &w {
            s.push_str(&"-".repeat(x + 2));
            s.push('+');
        }
        s.push('\n');
        s
    };
    let mut out = rule.clone();
    out.push('|');
    for (i, h) in header.iter().enumerate() {
        let h = h.to_uppercase();
        let pad = w[i] - h.chars().count();
        let left = pad / 2;
        out.push_str(&format!(
            " {}{}{} |",
            " ".repeat(left),
            h,
            " ".repeat(pad - left)
        ));
    }
    out.push('\n');
    out.push_str(&rule);
    for r in rows {
        out.push('|');
        for (i, x) in w.iter().enumerate() {
            let c = r.get(i).map_or("", String::as_str);
            let pad = " ".repeat(x - c.chars().count());
            if !c.is_empty() && c.parse::<f64>().is_ok() {
                out.push_str(&format!(" {pad}{c} |"));
            } else {
                out.push_str(&format!(" {c}{pad} |"));
            }
        }
        out.push('\n');
    }
    out.push_str(&rule);
    out
}

/// Go's `%.5g` for a count: exact up to 99,999, then 5 significant digits with an exponent.
pub fn g5(n: f64) -> String {
    if n == 0.0 {
        return "0".into();
    }
    let exp = n.abs().log10().floor() as i32;
    if (-4..5).contains(&exp) {
        let decimals = (4 - exp).max(0) as usize;
        let s = format!("{n:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        let m = n / 10f64.powi(exp);
        let m = format!("{m:.4}");
        let m = m.trim_end_matches('0').trim_end_matches('.');
        format!("{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

/// calicoctl's `%.5g (%.f%%)`.
pub fn with_percent(n: f64, total: f64) -> String {
    let n = n + 0.0; // -0.0 (an empty sum) prints as "-0"
    let pct = if total > 0.0 { n / total * 100.0 } else { 0.0 };
    format!("{} ({pct:.0}%)", g5(n))
}

/// Documents as YAML (several: a `List`) or JSON.
pub fn documents(items: Vec<Value>, single: bool, yaml: bool) -> anyhow::Result<String> {
    let doc = if single && items.len() == 1 {
        items.into_iter().next().unwrap_or(Value::Null)
    } else {
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    };
    Ok(if yaml {
        serde_yaml_ng::to_string(&doc)?
    } else {
        let mut s = serde_json::to_string_pretty(&doc)?;
        s.push('\n');
        s
    })
}

/// Compares `got` with `tests/golden/<name>`; `BRINDLE_UPDATE_GOLDEN=1` rewrites the file
/// instead (then review the diff before committing it).
#[cfg(test)]
pub(crate) fn assert_golden(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("BRINDLE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, got).expect("writing the golden file");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(got, want, "output differs from {}", path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calicoctl_node_status_sample() {
        // The sample in calicoctl's documentation (REFERENCE.md §A5).
        let t = boxed(
            &["Peer address", "Peer type", "State", "Since", "Info"],
            &[vec![
                "172.17.8.102".into(),
                "node-to-node mesh".into(),
                "up".into(),
                "23:30:04".into(),
                "Established".into(),
            ]],
        );
        assert!(
            t.contains("| PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |    INFO     |"),
            "{t}"
        );
        assert!(t.contains("| 172.17.8.102 | node-to-node mesh | up    | 23:30:04 | Established |"));
    }

    #[test]
    fn go_number_formats() {
        assert_eq!(g5(65536.0), "65536");
        assert_eq!(g5(1048576.0), "1.0486e+06");
        assert_eq!(g5(16777216.0), "1.6777e+07");
        assert_eq!(with_percent(5.0, 64.0), "5 (8%)");
        assert_eq!(with_percent(0.0, 64.0), "0 (0%)");
        assert_eq!(with_percent(-0.0, 64.0), "0 (0%)");
    }

    #[test]
    fn numbers_right_strings_left() {
        let t = boxed(
            &["a", "b"],
            &[
                vec!["65536".into(), "5 (0%)".into()],
                vec!["1".into(), "x".into()],
            ],
        );
        assert!(
            t.contains("| 65536 | 5 (0%) |") && t.contains("|     1 | x      |"),
            "{t}"
        );
    }
}
