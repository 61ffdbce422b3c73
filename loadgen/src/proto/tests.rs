use super::*;
use crate::cli::RunArgs;
use crate::scenario::RunConfig;

fn codec(kind: ProtocolKind) -> Codec {
    let config = ProtocolConfig {
        kind,
        ..ProtocolConfig::default()
    };
    Codec::new(&config, "127.0.0.1:6000".parse().unwrap(), 1)
}

fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
    assert_eq!(frame[1] & 0x80, 0x80, "client frames are masked");
    let len = usize::from(frame[1] & 0x7F);
    let mask = &frame[2..6];
    let payload = frame[6..6 + len]
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i % 4])
        .collect();
    assert_eq!(frame.len(), 6 + len);
    (frame[0], payload)
}

#[test]
fn resp_and_line_heartbeats_carry_the_intended_time_and_their_echo_gives_it_back() {
    let mut out = Vec::new();
    let mut resp = codec(ProtocolKind::Resp);
    resp.heartbeat(1_234_000, &mut out);
    assert_eq!(out, b"*2\r\n$4\r\nPING\r\n$7\r\n1234000\r\n");
    assert_eq!(
        resp.decode(b"$7\r\n1234000\r\n"),
        Ok(Some((Decoded::Reply(Some(1_234_000)), 13)))
    );
    let mut line = codec(ProtocolKind::Line);
    line.heartbeat(1_234_000, &mut out);
    assert_eq!(out, b"1234000\n");
    assert_eq!(
        line.decode(b"1234000\n12"),
        Ok(Some((Decoded::Reply(Some(1_234_000)), 8)))
    );
    assert_eq!(
        line.decode(b"1234000\r\n"),
        Ok(Some((Decoded::Reply(Some(1_234_000)), 9)))
    );
    assert_eq!(line.decode(b"12"), Ok(None));
    assert_eq!(line.decode(b"hello\n").unwrap_err().0, ErrorKind::Protocol);
    let long = vec![b'1'; 65];
    assert_eq!(line.decode(&long).unwrap_err().0, ErrorKind::Protocol);
    assert!(resp.echoes() && line.echoes() && !resp.has_handshake());
}

#[test]
fn memcache_version_replies_and_errors() {
    let mut m = codec(ProtocolKind::Memcache);
    let mut out = Vec::new();
    m.heartbeat(5, &mut out);
    assert_eq!(out, b"version\r\n");
    assert!(!m.echoes());
    assert_eq!(
        m.decode(b"VERSION 1.6.18\r\n"),
        Ok(Some((Decoded::Reply(None), 16)))
    );
    assert_eq!(m.decode(b"VERSION 1.6"), Ok(None));
    assert_eq!(
        m.decode(b"ERROR\r\n").unwrap_err().0,
        ErrorKind::ServerError
    );
    let e = m.decode(b"SERVER_ERROR out of memory\r\n").unwrap_err();
    assert_eq!(
        e,
        (ErrorKind::ServerError, "SERVER_ERROR out of memory".into())
    );
    assert_eq!(m.decode(b"STORED\r\n").unwrap_err().0, ErrorKind::Protocol);
}

#[test]
fn mqtt_connect_is_encoded_for_both_versions() {
    let mut out = Vec::new();
    mqtt::connect(MqttVersion::V311, 33, "c10m-1-7", &mut out);
    let mut want = vec![0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 33, 0, 8];
    want.extend_from_slice(b"c10m-1-7");
    assert_eq!(out, want);
    out.clear();
    mqtt::connect(MqttVersion::V5, 600, "x", &mut out);
    assert_eq!(
        out,
        [0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0x02, 0x58, 0, 0, 1, b'x']
    );
    // A long client id takes a two-byte remaining length.
    out.clear();
    mqtt::connect(MqttVersion::V311, 1, &"i".repeat(200), &mut out);
    assert_eq!(&out[..3], &[0x10, (212 % 128) as u8 | 0x80, 1]);
    assert_eq!(out.len(), 3 + 212);
    // The codec's handshake names the session.
    let c = codec(ProtocolKind::Mqtt);
    c.handshake(7, &mut out);
    assert!(out.ends_with(b"c10m-1-7"), "{out:?}");
}

#[test]
fn mqtt_connack_pingresp_and_disconnect() {
    let v3 = MqttVersion::V311;
    assert_eq!(
        mqtt::decode_connack(v3, &[0x20, 0x02, 0, 0, 0xD0]),
        Ok(Some(4))
    );
    assert_eq!(mqtt::decode_connack(v3, &[0x20, 0x02, 0]), Ok(None));
    let refused = mqtt::decode_connack(v3, &[0x20, 0x02, 0, 5]).unwrap_err();
    assert_eq!(refused.0, ErrorKind::Handshake);
    assert!(refused.1.contains("not authorized"), "{}", refused.1);
    let v5 = MqttVersion::V5;
    assert_eq!(
        mqtt::decode_connack(v5, &[0x20, 0x03, 0, 0, 0]),
        Ok(Some(5))
    );
    let banned = mqtt::decode_connack(v5, &[0x20, 0x03, 0, 0x8A, 0]).unwrap_err();
    assert!(banned.1.contains("banned"), "{}", banned.1);
    let wrong = mqtt::decode_connack(v3, &[0xD0, 0x00]).unwrap_err();
    assert_eq!(wrong.0, ErrorKind::Handshake);

    let mut m = codec(ProtocolKind::Mqtt);
    let mut out = Vec::new();
    m.heartbeat(9, &mut out);
    assert_eq!(out, [0xC0, 0x00]);
    assert!(m.goodbye(&mut out));
    assert_eq!(out, [0xE0, 0x00]);
    assert_eq!(
        m.decode(&[0xD0, 0x00, 0xD0]),
        Ok(Some((Decoded::Reply(None), 2)))
    );
    assert_eq!(m.decode(&[0xD0]), Ok(None));
    assert_eq!(
        m.decode(&[0xE0, 0x01, 0x8E]).unwrap_err().0,
        ErrorKind::PeerClose
    );
    assert_eq!(m.decode(&[0x30, 0x00]).unwrap_err().0, ErrorKind::Protocol);
    let bad_len = m.decode(&[0xD0, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).unwrap_err();
    assert_eq!(bad_len.0, ErrorKind::Protocol);
}

#[test]
fn websocket_accept_key_follows_rfc_6455() {
    // RFC 6455 §1.3's example.
    assert_eq!(
        ws::accept("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // Keys are 16 bytes, differ by session and seed, and are stable.
    let k = ws::key(1, 7);
    assert_eq!(k.len(), 24);
    assert_eq!(k, ws::key(1, 7));
    assert_ne!(k, ws::key(1, 8));
    assert_ne!(k, ws::key(2, 7));
}

fn upgrade_response(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn websocket_upgrade_is_checked() {
    let c = codec(ProtocolKind::Websocket);
    let mut out = Vec::new();
    c.handshake(7, &mut out);
    let text = String::from_utf8(out.clone()).unwrap();
    let key = ws::key(1, 7);
    assert!(
        text.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:6000\r\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!("Sec-WebSocket-Key: {key}\r\n")),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n"));
    let good = upgrade_response(&ws::accept(&key));
    assert_eq!(c.decode_handshake(7, &good), Ok(Some(good.len())));
    assert_eq!(c.decode_handshake(7, &good[..good.len() - 1]), Ok(None));
    let wrong_key = c.decode_handshake(8, &good).unwrap_err();
    assert_eq!(wrong_key.0, ErrorKind::Handshake);
    assert!(
        wrong_key.1.contains("Sec-WebSocket-Accept"),
        "{}",
        wrong_key.1
    );
    let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
    let e = c.decode_handshake(7, not_found).unwrap_err();
    assert_eq!(e.0, ErrorKind::Handshake);
    assert!(e.1.contains("404"), "{}", e.1);
}

#[test]
fn websocket_pings_are_masked_and_pongs_echo_the_time() {
    let mut c = codec(ProtocolKind::Websocket);
    let mut out = Vec::new();
    c.heartbeat(1_234_567, &mut out);
    let (b0, payload) = unmask(&out);
    assert_eq!(b0, 0x80 | ws::OP_PING);
    assert_eq!(payload, 1_234_567u64.to_be_bytes());
    let mut again = Vec::new();
    c.heartbeat(1_234_567, &mut again);
    assert_ne!(out[2..6], again[2..6], "each frame has its own mask");

    let mut pong = vec![0x8A, 8];
    pong.extend_from_slice(&1_234_567u64.to_be_bytes());
    assert_eq!(
        c.decode(&pong),
        Ok(Some((Decoded::Reply(Some(1_234_567)), 10)))
    );
    assert_eq!(c.decode(&pong[..5]), Ok(None));
    // The server's ping is answered with a masked pong of its payload.
    let Ok(Some((Decoded::Pong(answer), 4))) = c.decode(&[0x89, 2, b'h', b'i']) else {
        panic!("ping not answered");
    };
    assert_eq!(unmask(&answer), (0x80 | ws::OP_PONG, b"hi".to_vec()));
    let close = c.decode(&[0x88, 4, 0x03, 0xE9, b'b', b'y']).unwrap_err();
    assert_eq!(close.0, ErrorKind::PeerClose);
    assert!(close.1.contains("1001"), "{}", close.1);
    assert_eq!(
        c.decode(&[0x8A, 0x82, 0, 0, 0, 0, 1, 2]).unwrap_err().0,
        ErrorKind::Protocol
    );
    assert_eq!(
        c.decode(&[0x81, 2, b'h', b'i']).unwrap_err().0,
        ErrorKind::Protocol
    );
    assert_eq!(
        c.decode(&[0x8A, 2, 1, 2]).unwrap_err().0,
        ErrorKind::Protocol
    );
    // A 16-bit length is read before the frame is complete.
    assert_eq!(c.decode(&[0x82, 126, 0x01]), Ok(None));
    assert_eq!(c.decode(&[0x82, 126, 0x01, 0x00, 0]), Ok(None));
    assert!(c.goodbye(&mut out));
    assert_eq!(unmask(&out), (0x80 | ws::OP_CLOSE, vec![0x03, 0xE8]));
}

#[test]
fn http_responses_by_length_chunks_and_close() {
    let config = ProtocolConfig {
        kind: ProtocolKind::Http,
        path: "/health?x=1".into(),
        host: Some("example.test".into()),
        ..ProtocolConfig::default()
    };
    let mut c = Codec::new(&config, "127.0.0.1:80".parse().unwrap(), 1);
    let mut out = Vec::new();
    c.heartbeat(1, &mut out);
    assert_eq!(
        out,
        b"GET /health?x=1 HTTP/1.1\r\nHost: example.test\r\nUser-Agent: c10m-loadgen\r\n\r\n"
    );
    let ok = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 3\r\n\r\nok\n";
    assert_eq!(c.decode(ok), Ok(Some((Decoded::Reply(None), ok.len()))));
    assert_eq!(c.decode(&ok[..ok.len() - 1]), Ok(None));
    let chunked =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n1\r\n\n\r\n0\r\n\r\n";
    assert_eq!(
        c.decode(chunked),
        Ok(Some((Decoded::Reply(None), chunked.len())))
    );
    for cut in 40..chunked.len() {
        assert_eq!(c.decode(&chunked[..cut]), Ok(None), "cut at {cut}");
    }
    let cont = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
    assert_eq!(c.decode(cont), Ok(Some((Decoded::Reply(None), cont.len()))));
    let close = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        c.decode(close),
        Ok(Some((Decoded::ReplyThenClose(_), _)))
    ));
    let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        c.decode(old),
        Ok(Some((Decoded::ReplyThenClose(_), _)))
    ));
    let e = c
        .decode(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        .unwrap_err();
    assert_eq!(e, (ErrorKind::ServerError, "HTTP 404 Not Found".into()));
    let unbounded = c.decode(b"HTTP/1.1 200 OK\r\n\r\nok").unwrap_err();
    assert_eq!(unbounded.0, ErrorKind::Protocol);
    assert_eq!(
        c.decode(b"SSH-2.0-OpenSSH\r\n\r\n").unwrap_err().0,
        ErrorKind::Protocol
    );
}

#[test]
fn protocol_settings_are_validated() {
    assert_eq!(ProtocolKind::parse("ws").unwrap(), ProtocolKind::Websocket);
    let e = ProtocolKind::parse("amqp").unwrap_err().to_string();
    assert!(e.contains("expected resp, line"), "{e}");
    assert_eq!(MqttVersion::parse("5").unwrap(), MqttVersion::V5);
    assert!(MqttVersion::parse("3.1").is_err());
    // 30 s ± 10 %: 33 s apart at most, a keepalive of 34 s.
    assert_eq!(ProtocolConfig::default_keepalive_s(33_000), 34);
    assert_eq!(ProtocolConfig::default_keepalive_s(100_000_000), 0);
    let mqtt = |keepalive_s| ProtocolConfig {
        kind: ProtocolKind::Mqtt,
        keepalive_s,
        ..ProtocolConfig::default()
    };
    // The broker closes after 1.5 keepalives: 22 s allows 33 s, 21 s not.
    assert!(mqtt(22).validate(33_000).is_ok());
    let e = mqtt(21).validate(33_000).unwrap_err().to_string();
    assert!(e.contains("at least 22 s"), "{e}");
    assert!(mqtt(0).validate(33_000).is_ok());
    let bad_path = ProtocolConfig {
        path: "no-slash".into(),
        ..ProtocolConfig::default()
    };
    assert!(bad_path.validate(0).is_err());
    let bad_host = ProtocolConfig {
        host: Some("a b".into()),
        ..ProtocolConfig::default()
    };
    assert!(bad_host.validate(0).is_err());
}

#[test]
fn flags_resolve_into_the_protocol_and_misplaced_ones_are_refused() {
    let args = |f: &dyn Fn(&mut RunArgs)| {
        let mut a = RunArgs {
            heartbeat: Some(std::time::Duration::from_secs(30)),
            ..RunArgs::default()
        };
        f(&mut a);
        RunConfig::resolve(&a)
    };
    let c = args(&|a| a.protocol = Some("mqtt".into())).unwrap();
    assert_eq!(c.protocol.kind, ProtocolKind::Mqtt);
    assert_eq!(c.protocol.keepalive_s, 34, "30 s + 10 % jitter + 1 s");
    let c = args(&|a| {
        a.protocol = Some("http".into());
        a.path = Some("/ping".into());
    })
    .unwrap();
    assert_eq!(
        (c.protocol.kind, c.protocol.path.as_str()),
        (ProtocolKind::Http, "/ping")
    );
    assert_eq!(c.protocol.keepalive_s, 0);
    let e = args(&|a| a.keepalive = Some(60)).unwrap_err().to_string();
    assert!(
        e.contains("--keepalive does not apply to protocol resp"),
        "{e}"
    );
    let e = args(&|a| {
        a.protocol = Some("mqtt".into());
        a.path = Some("/".into());
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("http and websocket only"), "{e}");
    let e = args(&|a| {
        a.protocol = Some("mqtt".into());
        a.keepalive = Some(10);
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("raise --keepalive"), "{e}");
}
