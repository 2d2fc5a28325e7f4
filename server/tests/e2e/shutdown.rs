//! Shutdown closes every connection with 1001 and returns.

use crate::harness::*;

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let server = Server::start().await;
    let mut a = server.connect("1", "7").await;
    let mut b = server.connect("2", "8").await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(
        a.expect_close().await,
        (1001, "server shutting down".into())
    );
    assert_eq!(
        b.expect_close().await,
        (1001, "server shutting down".into())
    );
    within(stopping).await.unwrap().unwrap();
}
