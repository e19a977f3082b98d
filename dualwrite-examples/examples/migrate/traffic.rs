//! The live traffic: threads that read and write through the adapters the
//! whole time, as a service's request handlers would.
//!
//! Each thread owns a slice of the keys (user id modulo the thread count),
//! as requests for one user would land on one handler at a time, and runs
//! a fixed mix: update a user (read, then save the next version), read a
//! user, place an order, change an order's status, delete an order, read an
//! order. The rate is capped so the machine is not saturated: the gate's
//! latency criterion compares caller and primary latency, and a starved
//! CPU would measure the scheduler.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::model::{Order, OrderRepo, Status, User, UserRepo};

/// Counts kept by the traffic threads.
#[derive(Default)]
pub struct TrafficStats {
    pub calls: AtomicU64,
    pub errors: AtomicU64,
}

/// The running traffic; [`Traffic::stop`] joins the threads.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub stats: Arc<TrafficStats>,
}

/// Ids of orders placed live start here, above the history's.
const LIVE_ORDER_BASE: i64 = 1 << 40;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: plenty for picking operations and keys.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl Traffic {
    /// Starts `threads` threads doing about `rate` calls per second in all
    /// over `users` history users.
    pub fn start<U, O>(
        users: Arc<U>,
        orders: Arc<O>,
        history: i64,
        threads: usize,
        rate: u64,
    ) -> Traffic
    where
        U: UserRepo + Send + Sync + 'static,
        O: OrderRepo + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(TrafficStats::default());
        let threads = threads.max(1);
        let per_thread = (rate / threads as u64).max(1);
        let handles = (0..threads)
            .map(|t| {
                let (users, orders, stop, stats) =
                    (users.clone(), orders.clone(), stop.clone(), stats.clone());
                std::thread::Builder::new()
                    .name(format!("traffic-{t}"))
                    .spawn(move || {
                        let worker = Worker {
                            slot: t as i64,
                            threads: threads as i64,
                            history,
                            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1)),
                            placed: Vec::new(),
                            next_order: 0,
                        };
                        worker.run(&*users, &*orders, &stop, &stats, per_thread);
                    })
                    .expect("spawn a traffic thread")
            })
            .collect();
        Traffic {
            stop,
            threads: handles,
            stats,
        }
    }

    /// Stops the threads and waits for them.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

struct Worker {
    slot: i64,
    threads: i64,
    history: i64,
    rng: Rng,
    /// Orders this thread placed and has not deleted.
    placed: Vec<i64>,
    next_order: i64,
}

impl Worker {
    fn run<U: UserRepo, O: OrderRepo>(
        mut self,
        users: &U,
        orders: &O,
        stop: &AtomicBool,
        stats: &TrafficStats,
        per_second: u64,
    ) {
        let interval = Duration::from_secs_f64(1.0 / per_second as f64);
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let ok = self.one_call(users, orders);
            stats.calls.fetch_add(1, Ordering::Relaxed);
            if !ok {
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else if now - next > Duration::from_millis(100) {
                // Fell behind (a fence held the writes): do not burst.
                next = now;
            }
        }
    }

    /// A user id of this thread's slice.
    fn user(&mut self) -> i64 {
        let slices = (self.history / self.threads).max(1) as u64;
        self.rng.below(slices) as i64 * self.threads + self.slot + 1
    }

    /// A history order of this thread's slice (users own orders 2u, 2u+1).
    fn history_order(&mut self) -> i64 {
        self.user() * 2 + self.rng.below(2) as i64
    }

    fn one_call<U: UserRepo, O: OrderRepo>(&mut self, users: &U, orders: &O) -> bool {
        match self.rng.below(100) {
            0..40 => {
                let id = self.user();
                match users.get_user(id) {
                    Ok(Some(user)) => {
                        let n = self.rng.below(1000);
                        let next = User {
                            email: (!n.is_multiple_of(4)).then(|| format!("u{id}.{n}@example.org")),
                            full_name: if n.is_multiple_of(10) {
                                format!("Renamed{n} Person{id}")
                            } else {
                                user.full_name.clone()
                            },
                            version: user.version + 1,
                            ..user
                        };
                        users.save_user(&next).is_ok()
                    }
                    Ok(None) => true,
                    Err(_) => false,
                }
            }
            40..60 => users.get_user(self.user()).is_ok(),
            60..72 => {
                let id = LIVE_ORDER_BASE + (self.next_order * self.threads + self.slot);
                self.next_order += 1;
                let order = Order {
                    id,
                    user_id: self.user(),
                    amount_cents: 100 + self.rng.below(90_000) as i64,
                    status: Status::New,
                    note: (self.rng.below(3) == 0).then(|| format!("live order {id}")),
                    version: 1,
                };
                self.placed.push(id);
                orders.save_order(&order).is_ok()
            }
            72..84 => {
                let id = if self.placed.is_empty() || self.rng.below(2) == 0 {
                    self.history_order()
                } else {
                    self.placed[self.rng.below(self.placed.len() as u64) as usize]
                };
                match orders.get_order(id) {
                    Ok(Some(order)) => {
                        let status = Status::ALL[self.rng.below(4) as usize];
                        orders
                            .save_order(&Order {
                                status,
                                version: order.version + 1,
                                ..order
                            })
                            .is_ok()
                    }
                    Ok(None) => true,
                    Err(_) => false,
                }
            }
            84..88 => match self.placed.pop() {
                Some(id) => orders.delete_order(id).is_ok(),
                None => true,
            },
            _ => orders.get_order(self.history_order()).is_ok(),
        }
    }
}
