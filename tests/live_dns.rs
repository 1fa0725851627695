//! Mail host lookups against a real DNS server on loopback (Debian's dnsmasq, started by
//! the test with its own records): MX preference order, A and AAAA, the implicit MX, null
//! MX, NXDOMAIN and NODATA as "no mail host", a dead upstream as a temporary failure, and
//! static routes.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::live::{Daemon, free_port};
use pmta_sim::driver::live::dns::{Resolver, Route, parse_server};
use pmta_sim::engine::{MxAnswer, MxHost};

fn dnsmasq(port: u16, dead_port: u16) -> Daemon {
    let records = [
        "--mx-host=multi.test,mx-far.multi.test,20",
        "--mx-host=multi.test,mx-near.multi.test,10",
        "--host-record=mx-far.multi.test,127.0.0.21",
        "--host-record=mx-near.multi.test,127.0.0.22,::1",
        "--mx-host=dangling.test,nowhere.dangling.test,10",
        "--host-record=implicit.test,127.0.0.23",
        "--mx-host=nullmx.test,.,0",
        "--txt-record=textonly.test,v=spf1 -all",
        "--host-record=relay.route.test,127.0.0.24",
    ];
    // Names under .test are answered from the records here, NXDOMAIN otherwise; fail.test
    // is forwarded to a port where nothing answers.
    common::live::dnsmasq(
        port,
        &records,
        &[format!("--server=/fail.test/127.0.0.1#{dead_port}")],
    )
}

async fn resolver_for(port: u16) -> Resolver {
    let server: SocketAddr = parse_server(&format!("127.0.0.1:{port}")).unwrap();
    // Wait until dnsmasq answers.
    let resolver = Resolver::with_server(server, Duration::from_millis(500), 1);
    for _ in 0..100 {
        if matches!(
            resolver.resolve_mx("implicit.test").await,
            MxAnswer::Hosts(_)
        ) {
            return Resolver::with_server(server, Duration::from_millis(700), 1);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("dnsmasq does not answer on port {port}");
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_lookups_against_dnsmasq() {
    let port = free_port();
    let _dnsmasq = dnsmasq(port, free_port());
    let resolver = resolver_for(port).await;

    assert_eq!(
        resolver.resolve_mx("multi.test").await,
        MxAnswer::Hosts(vec![
            MxHost {
                preference: 10,
                name: "mx-near.multi.test".into(),
                addresses: vec![ip("127.0.0.22"), ip("::1")],
                port: 25,
            },
            MxHost {
                preference: 20,
                name: "mx-far.multi.test".into(),
                addresses: vec![ip("127.0.0.21")],
                port: 25,
            },
        ])
    );
    // No MX: the domain's own address is its mail host (RFC 5321 §5.1).
    assert_eq!(
        resolver.resolve_mx("Implicit.Test.").await,
        MxAnswer::Hosts(vec![MxHost {
            preference: 0,
            name: "implicit.test".into(),
            addresses: vec![ip("127.0.0.23")],
            port: 25,
        }])
    );
    assert_eq!(
        resolver.resolve_mx("nullmx.test").await,
        MxAnswer::NoMailHost
    );
    assert_eq!(
        resolver.resolve_mx("nothing.test").await,
        MxAnswer::NoMailHost
    );
    assert_eq!(
        resolver.resolve_mx("textonly.test").await,
        MxAnswer::NoMailHost
    );
    assert_eq!(
        resolver.resolve_mx("dangling.test").await,
        MxAnswer::NoMailHost
    );
    match resolver.resolve_mx("x.fail.test").await {
        MxAnswer::TempFail(reason) => assert!(reason.starts_with("DNS lookup failed"), "{reason}"),
        other => panic!("expected a temporary failure, got {other:?}"),
    }

    // Static routes win over DNS; a route's host name is looked up.
    let routes = [
        "multi.test=127.0.0.1:2525".parse::<Route>().unwrap(),
        "other.test=relay.route.test:2526".parse().unwrap(),
    ];
    let resolver = resolver_for(port).await.with_routes(routes);
    assert_eq!(
        resolver.resolve_mx("multi.test").await,
        MxAnswer::Hosts(vec![MxHost {
            preference: 0,
            name: "127.0.0.1".into(),
            addresses: vec![ip("127.0.0.1")],
            port: 2525,
        }])
    );
    assert_eq!(
        resolver.resolve_mx("other.test").await,
        MxAnswer::Hosts(vec![MxHost {
            preference: 0,
            name: "relay.route.test".into(),
            addresses: vec![ip("127.0.0.24")],
            port: 2526,
        }])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_that_does_not_answer_is_a_temporary_failure() {
    let resolver = Resolver::with_server(
        format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        Duration::from_millis(300),
        1,
    );
    assert!(matches!(
        resolver.resolve_mx("example.test").await,
        MxAnswer::TempFail(_)
    ));
}

#[test]
fn routes_and_servers_parse_or_say_what_is_wrong() {
    let route: Route = "Example.COM=[::1]:2525".parse().unwrap();
    assert_eq!(
        (route.domain.as_str(), route.host.as_str(), route.port),
        ("example.com", "::1", 2525)
    );
    for bad in [
        "example.com",
        "example.com=host",
        "=h:25",
        "example.com=h:0",
        "d=h:x",
    ] {
        let error = bad.parse::<Route>().unwrap_err().to_string();
        assert!(error.contains("expected DOMAIN=HOST:PORT"), "{error}");
    }
    assert!(
        parse_server("127.0.0.1")
            .unwrap_err()
            .to_string()
            .contains("IP:PORT")
    );
}
