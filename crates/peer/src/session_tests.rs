//! Session unit tests: typed connect failures and Register batches that fit the tracker's limits.

use super::session_register::register_batches;
use super::*;
use proto::limits::MIN_CHUNK_SIZE;
use proto::Have;

fn welcome(max_frame: u32, max_files: u32) -> Welcome {
    Welcome {
        version: proto::PROTOCOL_VERSION,
        keepalive_ms: 1000,
        session_timeout_ms: 3000,
        observed: SocketAddr::from(([127, 0, 0, 1], 1)),
        max_frame,
        max_files_per_register: max_files,
    }
}

fn files(n: usize, chunks: usize) -> Vec<RegisterFile> {
    (0..n)
        .map(|i| RegisterFile {
            meta: FileMeta::from_bytes(
                &format!("f{i}"),
                MIN_CHUNK_SIZE,
                &vec![i as u8; chunks * MIN_CHUNK_SIZE as usize],
            ),
            have: Have::Complete,
        })
        .collect()
}

/// A tracker that cannot be reached is reported as a typed connect failure, with its address.
#[tokio::test]
async fn an_unreachable_tracker_is_a_typed_connect_failure() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = SessionConfig { tracker: addr.into(), request_timeout: Duration::from_secs(5) };
    let r = TrackerSession::connect(config, None, CancellationToken::new()).await;
    match r {
        Err(Error::TrackerUnreachable { tracker, reason }) if matches!(*reason, ConnectError::Connect(_)) => {
            assert_eq!(tracker, HostPort::from(addr));
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("connected to a closed port"),
    }
}

/// Batches respect the tracker's file cap and frame limit, and every batch really encodes
/// under the frame limit.
#[test]
fn register_batches_fit_the_trackers_limits() {
    let w = welcome(64 * 1024, 3);
    let batches = register_batches(files(10, 1), &w);
    assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);

    // One file's metadata alone larger than a frame: left out, the others still go.
    let mut big = files(1, 600);
    big.extend(files(3, 1));
    let batches = register_batches(big, &welcome(16 * 1024, 1000));
    assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 3);

    let w = welcome(16 * 1024, 1000);
    let batches = register_batches(files(20, 40), &w);
    assert!(batches.len() > 1);
    assert_eq!(batches.iter().map(Vec::len).sum::<usize>(), 20);
    for b in batches {
        let req = TrackerRequest::Register(Register { listen: SocketAddr::from(([127, 0, 0, 1], 9)), files: b });
        assert!(postcard::to_stdvec(&req).unwrap().len() <= 16 * 1024);
    }
}

fn registration(listen: &str, dual_stack: bool, announce: Option<&str>) -> Registration {
    Registration {
        listen: listen.parse().unwrap(),
        dual_stack,
        announce: announce.map(|a| HostPort::parse(a, 0).unwrap()),
        shares: crate::shares::Shares::default(),
        only: None,
    }
}

/// A peer never registers an endpoint it does not listen on: an IPv4-only listener seen by the
/// tracker over IPv6 is refused before anything is sent; the rest go through, the announced
/// endpoint with the listener's port unless it names one.
#[tokio::test]
async fn the_endpoint_registered_is_one_the_peer_listens_on() {
    let v6: IpAddr = "fd00::2".parse().unwrap();
    let v4: IpAddr = "10.0.0.2".parse().unwrap();
    let mapped: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
    let err = registration("0.0.0.0:7000", false, None).endpoint(v6).await.unwrap_err();
    assert!(matches!(err, ConnectError::NotListening { .. }), "{err}");
    assert!(err.is_permanent());
    assert!(err.to_string().contains("[fd00::2]:7000") && err.to_string().contains("0.0.0.0:7000"), "{err}");
    let v6_only = registration("[::]:7000", false, None).endpoint(v4).await.unwrap_err();
    assert!(matches!(v6_only, ConnectError::NotListening { .. }), "{v6_only}");
    for (listen, dual, seen) in
        [("0.0.0.0:7000", false, v4), ("0.0.0.0:7000", false, mapped), ("[::]:7000", true, v4), ("[::]:7000", true, v6)]
    {
        let reg = registration(listen, dual, None);
        assert_eq!(reg.endpoint(seen).await.unwrap(), reg.listen, "{listen} seen from {seen}");
    }
    let announced = registration("[::]:7000", true, Some("10.9.9.9")).endpoint(v4).await.unwrap();
    assert_eq!(announced, "10.9.9.9:7000".parse().unwrap());
    let forwarded = registration("[::]:7000", true, Some("[fd00::9]:443")).endpoint(v4).await.unwrap();
    assert_eq!(forwarded, "[fd00::9]:443".parse().unwrap());
}
