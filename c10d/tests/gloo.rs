//! Two ranks on threads of this process, meeting over loopback: what the shim returns is what
//! libtorch's Gloo computed, and failures come back as errors within the timeout.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::time::{Duration, Instant};

use face2simpson_c10d::{Backend, Error, Failure, GlooBind, ProcessGroup, ReduceOp, Rendezvous};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rendezvous(port: u16, rank: usize, world_size: usize, timeout: Duration) -> Rendezvous {
    Rendezvous {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size,
        timeout,
        gloo_bind: GlooBind::Address("127.0.0.1".into()),
    }
}

/// Runs `f(group)` on every rank of a world of `world_size`, each on its own thread.
fn on_ranks<T: Send + 'static>(
    world_size: usize,
    f: impl Fn(ProcessGroup) -> T + Send + Sync + Clone + 'static,
) -> Vec<T> {
    let port = free_port();
    let handles: Vec<_> = (0..world_size)
        .map(|rank| {
            let f = f.clone();
            std::thread::spawn(move || {
                let at = rendezvous(port, rank, world_size, Duration::from_secs(20));
                f(ProcessGroup::new(Backend::Gloo, &at).unwrap())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
}

#[test]
fn allreduce_broadcast_and_barrier_across_two_ranks() {
    let results = on_ranks(2, |pg| {
        let r = pg.rank() as f32;
        let mut sum = vec![
            Tensor::from_slice(&[1.0f32 + r, 10.0 * r, -r]),
            Tensor::full([2, 2], f64::from(r + 1.0), (Kind::Float, Device::Cpu)),
        ];
        pg.allreduce(&mut sum, ReduceOp::Sum).unwrap();
        let mut avg = vec![Tensor::from_slice(&[2.0f32 * r, 4.0])];
        pg.allreduce(&mut avg, ReduceOp::Avg).unwrap();
        let mut max = vec![Tensor::from_slice(&[r, -r])];
        pg.allreduce(&mut max, ReduceOp::Max).unwrap();
        let mut root = vec![Tensor::from_slice(&[5.0f32 + r, 7.0 + r])];
        pg.broadcast(&mut root, 1).unwrap();
        pg.barrier().unwrap();
        (
            values(&sum[0]),
            values(&sum[1]),
            values(&avg[0]),
            values(&max[0]),
            values(&root[0]),
        )
    });
    for (sum0, sum1, avg, max, root) in results {
        assert_eq!(sum0, [3.0, 10.0, -1.0]);
        assert_eq!(sum1, [3.0; 4]);
        assert_eq!(avg, [1.0, 4.0]);
        assert_eq!(max, [1.0, 0.0]);
        assert_eq!(root, [6.0, 8.0], "rank 1's values everywhere");
    }
}

#[test]
fn a_world_of_one_needs_no_peer() {
    let port = free_port();
    let pg = ProcessGroup::new(
        Backend::Gloo,
        &rendezvous(port, 0, 1, Duration::from_secs(5)),
    )
    .unwrap();
    let mut t = vec![Tensor::from_slice(&[1.5f32, 2.5])];
    pg.allreduce(&mut t, ReduceOp::Avg).unwrap();
    pg.broadcast(&mut t, 0).unwrap();
    assert_eq!(values(&t[0]), [1.5, 2.5]);
}

/// Rank 0 waits for a rank 1 that never comes: an error after the timeout, not a hang.
#[test]
fn a_missing_rank_fails_the_rendezvous_within_the_timeout() {
    let port = free_port();
    let started = Instant::now();
    let err = ProcessGroup::new(
        Backend::Gloo,
        &rendezvous(port, 0, 2, Duration::from_secs(2)),
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Rendezvous { .. }), "{err}");
    assert_eq!(err.failure(), Some(Failure::Timeout), "{err}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

/// Rank 1 leaves after the rendezvous: rank 0's next collective fails, it does not hang.
#[test]
fn a_peer_that_left_fails_the_collective() {
    let results = on_ranks(2, |pg| {
        if pg.rank() == 1 {
            drop(pg);
            return None;
        }
        let started = Instant::now();
        let mut t = vec![Tensor::from_slice(&[1.0f32])];
        let err = pg.allreduce(&mut t, ReduceOp::Sum).unwrap_err();
        Some((err.failure(), err.to_string(), started.elapsed()))
    });
    let (failure, err, took) = results[0].clone().unwrap();
    assert_eq!(failure, Some(Failure::Network), "{err}");
    assert!(took < Duration::from_secs(19), "took {took:?}: {err}");
}

#[test]
fn bad_arguments_are_errors_not_crashes() {
    let at = rendezvous(free_port(), 2, 2, Duration::from_secs(1));
    assert!(matches!(
        ProcessGroup::new(Backend::Gloo, &at),
        Err(Error::Invalid(_))
    ));
    if !Backend::Nccl.is_available() {
        let at = rendezvous(free_port(), 0, 1, Duration::from_secs(1));
        assert!(matches!(
            ProcessGroup::new(Backend::Nccl, &at),
            Err(Error::Unavailable(Backend::Nccl))
        ));
    }
    let pg = ProcessGroup::new(
        Backend::Gloo,
        &rendezvous(free_port(), 0, 1, Duration::from_secs(5)),
    )
    .unwrap();
    // Undefined and non-contiguous tensors are refused before they reach C++.
    let mut undefined = vec![Tensor::new()];
    assert!(matches!(
        pg.allreduce(&mut undefined, ReduceOp::Sum),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(pg.broadcast(&mut [], 3), Err(Error::Invalid(_))));
    let mut strided = vec![Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)).transpose(0, 1)];
    assert!(matches!(
        pg.allreduce(&mut strided, ReduceOp::Sum),
        Err(Error::Invalid(_))
    ));
}
