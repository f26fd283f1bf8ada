//! The send deadline is on progress: a slow reader gets all of a reply that takes many deadlines
//! to drain; a client that reads nothing is cut off after one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::{slot_keys, Conn, SlotKey, UploadError, PREFIX_FACTOR};

/// A connected pair with small socket buffers, so a large write drains only as fast as the
/// client reads.
async fn small_buffered_pair() -> (Conn, TcpStream) {
    let listener = TcpSocket::new_v4().unwrap();
    listener.set_send_buffer_size(4096).unwrap();
    listener.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let listener = listener.listen(1).unwrap();
    let client = TcpSocket::new_v4().unwrap();
    client.set_recv_buffer_size(4096).unwrap();
    let (client, accepted) = tokio::join!(client.connect(listener.local_addr().unwrap()), listener.accept());
    (Conn::new(accepted.unwrap().0), client.unwrap())
}

#[tokio::test]
async fn a_slow_steady_reader_gets_a_reply_longer_than_the_deadline() {
    let (mut conn, mut client) = small_buffered_pair().await;
    let reply = vec![7u8; 512 * 1024];
    let reader = tokio::spawn(async move {
        let (mut got, mut buf) = (0, vec![0u8; 8192]);
        while got < 512 * 1024 {
            got += client.read(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        got
    });
    let start = Instant::now();
    conn.write(&mut &reply[..], Duration::from_millis(300)).await.unwrap();
    let took = start.elapsed();
    assert_eq!(reader.await.unwrap(), 512 * 1024);
    // Otherwise the test shows nothing: the whole reply took longer than the deadline.
    assert!(took > Duration::from_millis(300), "drained in {took:?}: buffers too large for this test");
}

#[tokio::test]
async fn a_client_that_reads_nothing_is_cut_off_after_one_deadline() {
    let (mut conn, _client) = small_buffered_pair().await;
    let reply = vec![7u8; 4 * 1024 * 1024];
    let start = Instant::now();
    let err = conn.write(&mut &reply[..], Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, UploadError::Stalled { after } if after == Duration::from_millis(200)), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
}

#[test]
fn addresses_are_counted_by_host_and_ipv6_prefixes_with_room_for_a_lan() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let keys = |s: &str| slot_keys(ip(s), 4);
    assert_eq!(keys("::ffff:10.1.2.3"), vec![(SlotKey::Addr(ip("10.1.2.3")), 4)]);
    assert_eq!(keys("10.1.2.3"), vec![(SlotKey::Addr(ip("10.1.2.3")), 4)]);
    let v6 = keys("2001:db8:1:2:aaaa:bbbb:cccc:dddd");
    assert_eq!(v6[0], (SlotKey::Addr(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), 4));
    assert_eq!(v6[1].1, 4 * PREFIX_FACTOR);
    assert_eq!(keys("2001:db8:1:2::1")[1], keys("2001:db8:1:2:ffff::9")[1], "one /64");
    assert_ne!(keys("2001:db8:1:2::1")[1], keys("2001:db8:1:3::1")[1]);
}
