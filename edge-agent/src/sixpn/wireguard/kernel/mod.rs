//! Kernel WireGuard through generic netlink.
//!
//! [`KernelWg`] configures a `wireguard` link with `WG_CMD_SET_DEVICE` and reads it back with
//! `WG_CMD_GET_DEVICE` (include/uapi/linux/wireguard.h), taking and returning the same
//! [`DeviceConfig`] and [`DeviceState`] as [`super::uapi::Uapi`], so a caller can hold either.
//! Which of the two this kernel allows is [`super::choice::Implementation::detect`]'s to say.

mod answers;
pub mod messages;

use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::WireguardMessage;

use super::uapi::{DeviceConfig, DeviceState};
use crate::netlink::{
    generic,
    socket::{valid_ifname, NlSocket},
    NetlinkError,
};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("the kernel has no `wireguard` generic netlink family (no WireGuard module)")]
    NoFamily,
    #[error("{ifname:?} is not an interface name (1 to 15 bytes, no '/', ':' or whitespace)")]
    BadName { ifname: String },
    #[error("{what} does not fit in a {limit}-byte netlink message")]
    TooBig { what: String, limit: usize },
    #[error("the private key could not be encoded")]
    BadKey,
    #[error("{ifname}: unexpected WG_CMD_GET_DEVICE answer: {why}")]
    BadAnswer { ifname: String, why: String },
}

/// A kernel WireGuard link, configured over generic netlink in the network namespace of the
/// thread that opened it (whichever thread then uses it). Not `Sync`, like its socket.
///
/// A configuration that needs several messages (see [`messages::MESSAGE_LIMIT`]) is applied one message at
/// a time, as wg(8) applies it: if one fails, those before it stay applied.
#[derive(Debug)]
pub struct KernelWg {
    ifname: String,
    family: u16,
    socket: NlSocket,
}

impl KernelWg {
    /// Opens generic netlink and looks up the `wireguard` family; [`KernelError::NoFamily`] where
    /// the kernel has no WireGuard. The link itself is created apart
    /// ([`crate::netlink::link::NetlinkLink::create_wireguard`]).
    pub fn open(ifname: &str) -> Result<Self, KernelError> {
        check_name(ifname)?;
        let (socket, family) = open_family()?;
        Ok(Self {
            ifname: ifname.to_owned(),
            family,
            socket,
        })
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The id the kernel gave the `wireguard` generic netlink family.
    pub fn family_id(&self) -> u16 {
        self.family
    }

    pub fn set(&self, config: &DeviceConfig) -> Result<(), KernelError> {
        let messages = messages::set_device_messages(&self.ifname, self.family, config)?;
        let count = messages.len();
        for (i, bytes) in messages.into_iter().enumerate() {
            let op = format!("WG_CMD_SET_DEVICE on {} ({}/{count})", self.ifname, i + 1);
            self.socket
                .request::<GenlMessage<WireguardMessage>>(&op, bytes)?;
        }
        Ok(())
    }

    pub fn get(&self) -> Result<DeviceState, KernelError> {
        let op = format!("WG_CMD_GET_DEVICE on {}", self.ifname);
        let answers = self.socket.request::<GenlMessage<WireguardMessage>>(
            &op,
            messages::get_device_message(&self.ifname, self.family)?,
        )?;
        answers::device_state(answers.into_iter().map(|answer| answer.payload)).map_err(|why| {
            KernelError::BadAnswer {
                ifname: self.ifname.clone(),
                why,
            }
        })
    }
}

/// Opens generic netlink and looks up the `wireguard` family on it:
/// [`KernelError::NoFamily`] where the kernel has no WireGuard.
pub(crate) fn open_family() -> Result<(NlSocket, u16), KernelError> {
    let socket = generic::open()?;
    let family = generic::family_id::<WireguardMessage>(&socket)?.ok_or(KernelError::NoFamily)?;
    Ok((socket, family))
}

fn check_name(ifname: &str) -> Result<(), KernelError> {
    if valid_ifname(ifname) {
        Ok(())
    } else {
        Err(KernelError::BadName {
            ifname: ifname.to_owned(),
        })
    }
}
