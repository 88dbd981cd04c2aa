use super::*;

fn text(v: &Value) -> &str {
    match v {
        Value::Str(s) => s.as_str(),
        other => panic!("not a string: {other:?}"),
    }
}

#[test]
fn reads_what_json_allows() {
    let v = parse(b" {\"a\" : [1, true, false, null, \"x\"], \"b\":{}, \"c\":[]}\r\n\t").unwrap();
    let Value::Object(fields) = v else {
        panic!("not an object")
    };
    assert_eq!(fields.len(), 3);
    assert_eq!(fields[0].0, "a");
    let Value::Array(items) = &fields[0].1 else {
        panic!("not an array")
    };
    assert!(matches!(
        items[..],
        [
            Value::Int(1),
            Value::Bool(true),
            Value::Bool(false),
            Value::Null,
            Value::Str(_)
        ]
    ));
    assert!(matches!(parse(b"0").unwrap(), Value::Int(0)));
    assert!(matches!(
        parse(b"18446744073709551615").unwrap(),
        Value::Int(u64::MAX)
    ));
}

#[test]
fn strings_and_escapes() {
    let v = parse(br#""a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00""#).unwrap();
    assert_eq!(
        text(&v),
        "a\"b\\c/d\u{8}\u{c}\n\r\tA\u{e9}\u{20ac}\u{1f600}"
    );
    assert_eq!(text(&parse("\"é€😀\"".as_bytes()).unwrap()), "é€😀");
    assert_eq!(text(&parse(br#""\u0000""#).unwrap()), "\0");
}

#[test]
fn refuses_what_serde_json_refuses() {
    let bad: &[&[u8]] = &[
        b"",
        b" ",
        b"{",
        b"{\"a\"}",
        b"{\"a\":1,}",
        b"[1,]",
        b"[1 2]",
        b"{\"a\":1 \"b\":2}",
        b"{a:1}",
        b"01",
        b"-1",
        b"1.5",
        b"1e3",
        b"18446744073709551616",
        b"\"\\ud800\"",
        b"\"\\ud800\\u0041\"",
        b"\"\\udc00\"",
        b"\"\\x\"",
        b"\"\\u12g4\"",
        b"\"\\u12\"",
        b"\"a\nb\"",
        b"\"\xff\"",
        b"\"abc",
        b"\"abc\\",
        b"tru",
        b"nul",
        b"{} {}",
        b"{}x",
        b"{\"a\":1,\"a\":2}",
        b"'a'",
    ];
    for input in bad {
        assert!(
            parse(input).is_err(),
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert!(
            serde_json::from_slice::<serde_json::Value>(input).is_err()
                || input.starts_with(b"-")
                || input.starts_with(b"1")
                || input.starts_with(b"{\"a\":1,\"a\""),
            "serde_json takes {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    assert!(parse(deep(MAX_DEPTH + 1).as_bytes()).is_ok());
    let err = parse(deep(MAX_DEPTH + 2).as_bytes()).unwrap_err();
    assert_eq!(err.what, "nested too deeply");
    // A hostile depth is refused, not a stack overflow.
    assert!(parse(deep(1_000_000).as_bytes()).is_err());
}

#[test]
fn errors_never_quote_values() {
    let err = parse(b"{\"code\":\"123456\" \"x\"}")
        .unwrap_err()
        .to_string();
    assert!(!err.contains("123456"), "{err}");
    assert!(err.contains("byte 17"), "{err}");
}

#[test]
fn writes_strings_as_serde_json_does() {
    let mut all = String::new();
    for c in 0u32..0x250 {
        all.push(char::from_u32(c).unwrap());
    }
    all.push_str("\u{2028}\u{feff}😀\"\\");
    for s in [all.as_str(), "", "plain", "\u{7f}", "tab\there"] {
        let mut out = Vec::new();
        write_str(&mut out, s);
        assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        assert!(out.len() <= max_str_len(s));
        assert_eq!(text(&parse(&out).unwrap()), s);
    }
}

#[test]
fn writes_integers() {
    for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
        let mut out = Vec::new();
        write_u64(&mut out, n);
        assert_eq!(out, n.to_string().into_bytes());
    }
}
