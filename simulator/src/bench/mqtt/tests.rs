use super::*;

#[tokio::test]
async fn codec_frames_what_it_encodes() {
    let mut bytes = codec::connect("c1");
    codec::publish(&mut bytes, "a/b", &[7u8; 200], 1, 513);
    bytes.extend_from_slice(&codec::puback(9));
    let mut reader = codec::Reader::default();
    let mut stream = &bytes[..];
    let (h, body) = reader.next(&mut stream).await.expect("connect");
    assert_eq!((h, body.len()), (0x10, 14));
    let (h, body) = reader.next(&mut stream).await.expect("publish");
    assert_eq!(h, 0x32);
    assert_eq!(body.len(), 2 + 3 + 2 + 200, "two-byte remaining length");
    assert_eq!(codec::publish_pkid(&body), Some(513));
    assert!(reader.has_packet());
    let (h, body) = reader.next(&mut stream).await.expect("puback");
    assert_eq!((h, body), (0x40, vec![0, 9]));
    assert!(reader.next(&mut stream).await.is_err(), "end of stream");
}

#[test]
fn proc_fields_parse() {
    let stat = "42 (edge agent) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0";
    assert_eq!(cpu_time(stat), Some(Duration::from_secs(2)));
    assert!(rss_bytes(std::process::id()).is_some_and(|b| b > 0));
}
