//! How many client connections an HTTP server holds open: in all, and per
//! IP address. Each connection costs a file descriptor and a task before it
//! has said anything, so a flood of idle sockets must be turned away at
//! accept, before it starves the process of descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::HttpConfig;

/// Counts open connections against the two caps.
#[derive(Debug)]
pub struct ConnectionSlots {
    max_total: usize,
    max_per_address: usize,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    by_address: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Full,
    AddressFull,
}

/// One admitted connection; its slot is freed when this is dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    address: IpAddr,
}

impl ConnectionSlots {
    pub fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            open: Mutex::default(),
        })
    }

    pub fn from_config(http: &HttpConfig) -> Arc<Self> {
        Self::new(http.max_connections, http.max_connections_per_address)
    }

    /// A slot for a connection from `address`, unless a cap is reached.
    pub fn admit(self: &Arc<Self>, address: IpAddr) -> Result<Slot, Refused> {
        let mut open = self.open.lock().expect("connection slots lock");
        if open.total >= self.max_total {
            return Err(Refused::Full);
        }
        let of_address = open.by_address.entry(address).or_default();
        if *of_address >= self.max_per_address {
            return Err(Refused::AddressFull);
        }
        *of_address += 1;
        open.total += 1;
        Ok(Slot {
            slots: self.clone(),
            address,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().expect("connection slots lock").total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("connection slots lock");
        open.total -= 1;
        if let Some(count) = open.by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                open.by_address.remove(&self.address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_all_and_per_address_and_frees_on_drop() {
        let slots = ConnectionSlots::new(3, 2);
        let a = IpAddr::from([10, 0, 0, 1]);
        let b = IpAddr::from([10, 0, 0, 2]);
        let first = slots.admit(a).unwrap();
        let _second = slots.admit(a).unwrap();
        assert_eq!(slots.admit(a).unwrap_err(), Refused::AddressFull);
        let _third = slots.admit(b).unwrap();
        assert_eq!(slots.admit(b).unwrap_err(), Refused::Full);
        drop(first);
        assert_eq!(slots.open(), 2);
        assert!(slots.admit(a).is_ok(), "a freed slot is taken again");
    }
}
