//! Parser cases from InfluxDB's line protocol reference, malformed lines, precision, and
//! property tests (arbitrary input never panics; written lines read back unchanged).

use super::*;
use proptest::prelude::*;

fn one(line: &str) -> Line<'_> {
    match parse_line(line) {
        Ok(Some(l)) => l,
        other => panic!("{line:?} did not parse as one line: {other:?}"),
    }
}

fn err(line: &str) -> LineError {
    match parse_line(line) {
        Err(e) => e,
        other => panic!("{line:?} should fail, got {other:?}"),
    }
}

fn tags<'a>(l: &'a Line<'_>) -> Vec<(&'a str, &'a str)> {
    l.tags
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .collect()
}

#[test]
fn parses_a_full_line() {
    let l = one(
        "weather,location=us-midwest,season=summer temperature=82,humid=0.5 1465839830100400200",
    );
    assert_eq!(l.measurement, "weather");
    assert_eq!(tags(&l), [("location", "us-midwest"), ("season", "summer")]);
    assert_eq!(
        l.fields,
        vec![
            ("temperature".into(), FieldValue::Float(82.0)),
            ("humid".into(), FieldValue::Float(0.5)),
        ]
    );
    assert_eq!(l.timestamp, Some(1_465_839_830_100_400_200));
}

#[test]
fn field_types() {
    let l =
        one(r#"m f=-1.5e3,g=.5,h=1.,i=-42i,u=42u,t=t,T=TRUE,True=True,f2=F,no=false,s="hi",n=1"#);
    let values: Vec<_> = l.fields.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values,
        vec![
            FieldValue::Float(-1500.0),
            FieldValue::Float(0.5),
            FieldValue::Float(1.0),
            FieldValue::Integer(-42),
            FieldValue::UInteger(42),
            FieldValue::Boolean(true),
            FieldValue::Boolean(true),
            FieldValue::Boolean(true),
            FieldValue::Boolean(false),
            FieldValue::Boolean(false),
            FieldValue::String("hi".into()),
            FieldValue::Float(1.0),
        ]
    );
    assert_eq!(FieldValue::Boolean(true).as_f64(), Some(1.0));
    assert_eq!(FieldValue::Integer(-3).as_f64(), Some(-3.0));
    assert_eq!(FieldValue::String("x".into()).as_f64(), None);
    assert_eq!(
        one("m i=9223372036854775807i,u=18446744073709551615u").fields[1].1,
        FieldValue::UInteger(u64::MAX)
    );
}

#[test]
fn escaping_follows_the_spec() {
    // Measurement: comma and space; `=` needs no escape there.
    let l = one(r"my\ meas\,ure=x,tag\ key\,a\=b=val\ 1\,x\=y fi\=eld\ k=1");
    assert_eq!(l.measurement, "my meas,ure=x");
    assert_eq!(tags(&l), [("tag key,a=b", "val 1,x=y")]);
    assert_eq!(l.fields[0].0, "fi=eld k");
    // A backslash before any other character stays.
    let l = one(r"c:\temp,path=C:\dir v=1");
    assert_eq!(l.measurement, r"c:\temp");
    assert_eq!(tags(&l), [("path", r"C:\dir")]);
    // Strings: \" and \\ are escapes; commas, spaces and `=` are plain.
    let l = one(r#"m s="a \"quoted\" \\ back, slash = x \n" 5"#);
    assert_eq!(
        l.fields[0].1,
        FieldValue::String(r#"a "quoted" \ back, slash = x \n"#.into())
    );
    assert_eq!(l.timestamp, Some(5));
    // Unescaped names borrow from the input.
    assert!(matches!(one("m,a=b v=1").measurement, Cow::Borrowed(_)));
}

#[test]
fn whitespace_comments_and_line_endings() {
    let body = "# a comment\n\n   \r\n  m,a=b   v=1   10  \r\n\tx v=2\nlast v=3";
    let lines: Vec<_> = parse(body).collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let first = lines[0].as_ref().expect("parses");
    assert_eq!(
        (first.measurement.as_ref(), first.timestamp),
        ("m", Some(10))
    );
    // A tab is not a separator: it belongs to the measurement (the caller sanitizes it).
    assert_eq!(lines[1].as_ref().expect("parses").measurement, "\tx");
    assert_eq!(lines[2].as_ref().expect("parses").measurement, "last");
    assert_eq!(parse("").count(), 0);
    assert!(matches!(parse_line("  # only a comment"), Ok(None)));
}

#[test]
fn a_string_may_span_lines() {
    let body = "m s=\"two\nlines\" 1\nbad\nm v=2 2";
    let lines: Vec<_> = parse(body).collect();
    assert_eq!(
        lines[0].as_ref().expect("parses").fields[0].1,
        FieldValue::String("two\nlines".into())
    );
    // Line numbers count the string's newline.
    assert_eq!(lines[1].as_ref().expect_err("fails").line, 3);
    assert_eq!(lines[2].as_ref().expect("parses").timestamp, Some(2));
    let numbers: Vec<_> = parse(body).numbered().map(|(n, _)| n).collect();
    assert_eq!(numbers, [1, 3, 4]);
    let numbers: Vec<_> = parse("\n# c\n\nm v=1\n\nm v=2")
        .numbered()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(numbers, [4, 6]);
}

#[test]
fn malformed_lines_say_where_and_why() {
    let cases = [
        (",a=b v=1", ErrorKind::MissingMeasurement, 1),
        ("m", ErrorKind::MissingFields, 2),
        ("m,a=b", ErrorKind::MissingFields, 6),
        ("m,a=b ", ErrorKind::MissingFields, 7),
        ("m,=b v=1", ErrorKind::MissingTagKey, 3),
        ("m,a v=1", ErrorKind::MissingTagValue, 4),
        ("m,a= v=1", ErrorKind::MissingTagValue, 5),
        ("m,a=1,a=2 v=1", ErrorKind::DuplicateTag, 10),
        ("m =1", ErrorKind::MissingFieldKey, 3),
        ("m v", ErrorKind::MissingFieldValue, 4),
        ("m v=", ErrorKind::MissingFieldValue, 5),
        ("m v=1,", ErrorKind::MissingFieldKey, 7),
        ("m v=abc", ErrorKind::InvalidFieldValue, 5),
        ("m v=NaN", ErrorKind::InvalidFieldValue, 5),
        ("m v=inf", ErrorKind::InvalidFieldValue, 5),
        ("m v=1e400", ErrorKind::InvalidFieldValue, 5),
        ("m v=1e", ErrorKind::InvalidFieldValue, 5),
        ("m v=1.2.3", ErrorKind::InvalidFieldValue, 5),
        ("m v=-1u", ErrorKind::InvalidFieldValue, 5),
        ("m v=1.5i", ErrorKind::InvalidFieldValue, 5),
        ("m v=i", ErrorKind::InvalidFieldValue, 5),
        ("m v=9223372036854775808i", ErrorKind::IntegerOutOfRange, 5),
        ("m v=18446744073709551616u", ErrorKind::IntegerOutOfRange, 5),
        (r#"m v="open"#, ErrorKind::UnterminatedString, 5),
        (r#"m v="a"b"#, ErrorKind::InvalidFieldValue, 8),
        ("m v=1 12x", ErrorKind::InvalidTimestamp, 7),
        ("m v=1 1.5", ErrorKind::InvalidTimestamp, 7),
        ("m v=1 99999999999999999999", ErrorKind::InvalidTimestamp, 7),
        ("m v=1 1 2", ErrorKind::TrailingText, 9),
    ];
    for (line, kind, column) in cases {
        let e = err(line);
        assert_eq!(
            (e.kind, e.column, e.line),
            (kind, column, 1),
            "{line:?}: {e}"
        );
        assert_eq!(e.text, line);
    }
    let e = err("m v=zzz");
    assert_eq!(
        e.to_string(),
        r#"line 1: invalid field value (at column 5): "m v=zzz""#
    );
    // Long lines are quoted in part.
    let long = format!("m v={}", "x".repeat(500));
    assert_eq!(err(&long).text.len(), ERROR_TEXT_BYTES + '…'.len_utf8());
}

#[test]
fn a_bad_line_never_costs_its_neighbours() {
    let body = "ok v=1 1\nbad v=\nok v=2 2\nbad2 v=\"open\nok v=3 3\n";
    let results: Vec<_> = parse(body).collect();
    let good: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().and_then(|l| l.timestamp))
        .collect();
    assert_eq!(good, [1, 2, 3]);
    let bad: Vec<_> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| (e.line, e.kind)))
        .collect();
    assert_eq!(
        bad,
        [
            (2, ErrorKind::MissingFieldValue),
            (4, ErrorKind::UnterminatedString)
        ]
    );
}

#[test]
fn next_into_reuses_one_line_and_names_each_series_key() {
    let body = "cpu,host=a,region=eu usage=1,idle=2i 10\n\
                # comment\n\
                cpu,host=a,region=eu usage=3 20\n\
                bad,x= v=1\n\
                w\\ m,k\\=1=v\\,2 f\\ 1=\"s\"\n\
                cpu,host=a,region=eu usage=4 30";
    let mut lines = parse(body);
    let mut line = Line::default();
    let mut got = Vec::new();
    while let Some((number, r)) = lines.next_into(&mut line) {
        got.push((number, r.map_err(|e| e.kind), line.timestamp));
    }
    assert_eq!(
        got,
        [
            (1, Ok("cpu,host=a,region=eu"), Some(10)),
            (3, Ok("cpu,host=a,region=eu"), Some(20)),
            (4, Err(ErrorKind::MissingTagValue), None),
            (5, Ok("w\\ m,k\\=1=v\\,2"), None),
            (6, Ok("cpu,host=a,region=eu"), Some(30)),
        ]
    );
    // The last line parsed is what the buffer holds; the escaped line's names were unescaped.
    assert_eq!(line.fields, [("usage".into(), FieldValue::Float(4.0))]);
    let mut lines = parse("w\\ m,k\\=1=v\\,2 f\\ 1=\"s\"");
    let (_, key) = lines.next_into(&mut line).expect("one line");
    assert_eq!(key, Ok("w\\ m,k\\=1=v\\,2"));
    assert_eq!(line.measurement, "w m");
    assert_eq!(tags(&line), [("k=1", "v,2")]);
    assert_eq!(
        line.fields,
        [("f 1".into(), FieldValue::String("s".into()))]
    );
}

#[test]
fn next_into_and_the_iterator_agree() {
    let body = "a,t=1 v=1 1\nb v=\nc,t=2,u=3 x=1i,y=t\n  \nd,t=1,t=2 v=1\ne v=\"x\ny\" 5\n";
    let mut lines = parse(body);
    let mut line = Line::default();
    let mut via_buffer = Vec::new();
    while let Some((number, r)) = lines.next_into(&mut line) {
        via_buffer.push((number, r.map(|_| line.clone())));
    }
    let via_iter: Vec<_> = parse(body).numbered().collect();
    assert_eq!(via_buffer, via_iter);
}

#[test]
fn precision() {
    assert_eq!(Precision::from_v1(""), Some(Precision::Nanoseconds));
    assert_eq!(Precision::from_v1("n"), Some(Precision::Nanoseconds));
    assert_eq!(Precision::from_v1("u"), Some(Precision::Microseconds));
    assert_eq!(Precision::from_v1("m"), Some(Precision::Minutes));
    assert_eq!(Precision::from_v1("h"), Some(Precision::Hours));
    assert_eq!(Precision::from_v1("d"), None);
    assert_eq!(Precision::from_v2("us"), Some(Precision::Microseconds));
    assert_eq!(Precision::from_v2("u"), None);
    assert_eq!(Precision::from_v2("m"), None);
    let ms = 1_700_000_000_123;
    assert_eq!(
        Precision::Nanoseconds.to_millis(1_700_000_000_123_456_789),
        Some(ms)
    );
    assert_eq!(
        Precision::Microseconds.to_millis(1_700_000_000_123_456),
        Some(ms)
    );
    assert_eq!(Precision::Milliseconds.to_millis(ms), Some(ms));
    assert_eq!(
        Precision::Seconds.to_millis(1_700_000_000),
        Some(1_700_000_000_000)
    );
    assert_eq!(Precision::Minutes.to_millis(2), Some(120_000));
    assert_eq!(Precision::Hours.to_millis(1), Some(3_600_000));
    // Rounded down, also before 1970.
    assert_eq!(Precision::Nanoseconds.to_millis(-1), Some(-1));
    assert_eq!(Precision::Hours.to_millis(i64::MAX), None);
}

#[test]
fn display_writes_what_parse_reads() {
    let line = Line {
        measurement: "a b,c=d".into(),
        tags: vec![("k,=\\ ".into(), "v =,".into())],
        fields: vec![
            ("f=".into(), FieldValue::String("q\"\\\n,".into())),
            ("i".into(), FieldValue::Integer(i64::MIN)),
            ("u".into(), FieldValue::UInteger(u64::MAX)),
            ("b".into(), FieldValue::Boolean(false)),
            ("x".into(), FieldValue::Float(-0.0)),
            ("y".into(), FieldValue::Float(1e300)),
            ("z".into(), FieldValue::Float(f64::MIN_POSITIVE)),
        ],
        timestamp: Some(-5),
    };
    let text = line.to_string();
    assert_eq!(one(&text), line, "{text}");
    let Some(FieldValue::Float(x)) = one(&text).fields.get(4).map(|f| f.1.clone()) else {
        panic!("float");
    };
    assert!(x.is_sign_negative());
}

fn name() -> impl Strategy<Value = String> {
    // Anything but newlines and a trailing backslash (not representable, see the module doc).
    "[^\n#\\\\][^\n]{0,12}".prop_filter("no trailing backslash", |s| !s.ends_with('\\'))
}

fn field_value() -> impl Strategy<Value = FieldValue<'static>> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(FieldValue::Float),
        any::<i64>().prop_map(FieldValue::Integer),
        any::<u64>().prop_map(FieldValue::UInteger),
        any::<bool>().prop_map(FieldValue::Boolean),
        any::<String>().prop_map(|s| FieldValue::String(s.into())),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn parsing_arbitrary_text_never_panics(s in any::<String>()) {
        for r in parse(&s) {
            let _ = r;
        }
    }

    #[test]
    fn parsing_line_like_text_never_panics(s in "[a-z ,=\\\\\"\n\r#0-9.eiu-]{0,60}") {
        for r in parse(&s) {
            if let Err(e) = r {
                prop_assert!(e.line >= 1 && e.column >= 1);
            }
        }
    }

    #[test]
    fn a_reused_buffer_parses_as_fresh_lines_do(s in "[a-z ,=\\\\\"\n\r#0-9.eiu-]{0,80}") {
        let mut lines = parse(&s);
        let mut line = Line::default();
        let mut via_buffer = Vec::new();
        while let Some((number, r)) = lines.next_into(&mut line) {
            via_buffer.push((number, r.map(|_| line.clone())));
        }
        let via_iter: Vec<_> = parse(&s).numbered().collect();
        prop_assert_eq!(via_buffer, via_iter);
    }

    #[test]
    fn written_lines_read_back_unchanged(
        measurement in name(),
        tags in proptest::collection::btree_map(name(), name(), 0..4),
        fields in proptest::collection::vec((name(), field_value()), 1..4),
        timestamp in proptest::option::of(any::<i64>()),
    ) {
        let line = Line {
            measurement: measurement.into(),
            tags: tags.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            fields: fields.into_iter().map(|(k, v)| (k.into(), v)).collect(),
            timestamp,
        };
        let text = line.to_string();
        let parsed: Vec<_> = parse(&text).collect();
        prop_assert_eq!(parsed.len(), 1, "{}", text);
        prop_assert_eq!(parsed[0].as_ref().map_err(|e| e.to_string()), Ok(&line), "{}", text);
    }
}
