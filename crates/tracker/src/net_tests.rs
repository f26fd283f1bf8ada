//! `--listen` values, and the dual-stack listener over real sockets.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tokio::net::TcpStream;

use super::*;

#[test]
fn listen_values_are_a_port_or_an_address_with_a_port() {
    assert_eq!("6969".parse(), Ok(ListenAddr::AllInterfaces(6969)));
    assert_eq!("0".parse(), Ok(ListenAddr::AllInterfaces(0)));
    let addr = |s: &str| Ok(ListenAddr::Addr(s.parse().unwrap()));
    assert_eq!("10.0.0.1:6969".parse(), addr("10.0.0.1:6969"));
    assert_eq!("0.0.0.0:6969".parse(), addr("0.0.0.0:6969"));
    assert_eq!("[::1]:6969".parse(), addr("[::1]:6969"));
    assert_eq!("[::]:0".parse(), addr("[::]:0"));
    for bad in ["", "65536", "-1", "localhost:6969", "10.0.0.1", "::1:6969", "[::1]", ":6969", "6969 "] {
        let err = bad.parse::<ListenAddr>().unwrap_err();
        assert_eq!(err, BadListenAddr(bad.to_owned()));
        assert!(err.to_string().contains("is not a port (6969: every interface"), "{err}");
    }
}

/// Connects to `ip` at the listener's port and checks the listener accepts it.
async fn accepts(listener: &TcpListener, ip: IpAddr) -> io::Result<()> {
    let port = listener.local_addr()?.port();
    let (client, accepted) = tokio::join!(TcpStream::connect((ip, port)), listener.accept());
    let (client, (_, remote)) = (client?, accepted?);
    assert_eq!(remote.ip().to_canonical(), client.local_addr()?.ip().to_canonical());
    Ok(())
}

#[tokio::test]
async fn the_dual_stack_listener_takes_ipv4_and_ipv6_clients() {
    let listener = bind_dual_stack(0).unwrap();
    let local = listener.local_addr().unwrap();
    assert!(local.ip().is_unspecified() && local.port() != 0, "{local}");
    accepts(&listener, Ipv4Addr::LOCALHOST.into()).await.unwrap();
    if local.is_ipv4() {
        println!("note: no IPv6 on this machine: the listener fell back to {local}; ::1 not tried");
        return;
    }
    // A host with IPv6 but no ::1 (some containers) cannot be asked to connect there.
    if let Err(e) = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)) {
        println!("note: no IPv6 loopback on this machine ({e}); ::1 not tried");
        return;
    }
    accepts(&listener, Ipv6Addr::LOCALHOST.into()).await.unwrap();
}

#[tokio::test]
async fn an_address_binds_exactly_that() {
    let listener = ListenAddr::Addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).bind().unwrap();
    assert_eq!(listener.local_addr().unwrap().ip(), Ipv4Addr::LOCALHOST);
    accepts(&listener, Ipv4Addr::LOCALHOST.into()).await.unwrap();
    // The port a listener holds is taken for a second one, which fails rather than falling back.
    let taken = bind_dual_stack(0).unwrap();
    let port = taken.local_addr().unwrap().port();
    assert!(bind_dual_stack(port).is_err());
}
