//! Generic netlink, where a kernel subsystem (WireGuard among them) registers a family at run
//! time instead of owning a netlink protocol: the family's id is whatever the controller
//! (`nlctrl`) gave it when the module registered, so it is looked up by name here, and requests
//! are addressed to that id. What a family's messages hold is its driver's business.

use std::fmt::Debug;

use netlink_packet_core::{Emitable, NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use netlink_packet_generic::{
    ctrl::{nlas::GenlCtrlAttrs, GenlCtrl, GenlCtrlCmd},
    GenlFamily, GenlMessage,
};
use netlink_sys::protocols::NETLINK_GENERIC;

use super::socket::{NetlinkError, NlSocket};

/// A generic netlink socket in the calling thread's network namespace.
pub(crate) fn open() -> Result<NlSocket, NetlinkError> {
    NlSocket::open(NETLINK_GENERIC)
}

/// Asks the generic netlink controller for the id of family `F`, which the kernel assigns when
/// the module registers it; `None` where no module registered it.
pub(crate) fn family_id<F: GenlFamily>(socket: &NlSocket) -> Result<Option<u16>, NetlinkError> {
    let name = F::family_name();
    let mut message = NetlinkMessage::from(GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_owned())],
    }));
    message.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let op = format!("look up the {name} netlink family");
    let answers = match socket.request_message(&op, message) {
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    };
    Ok(answers
        .iter()
        .flat_map(|answer| &answer.payload.nlas)
        .find_map(|nla| match nla {
            GenlCtrlAttrs::FamilyId(id) => Some(*id),
            _ => None,
        }))
}

/// `payload` serialized as a request to the family the kernel numbered `family_id`, with the
/// netlink header's `flags` (the sequence number is left 0: [`NlSocket::request`] sets it).
pub(crate) fn request<F>(family_id: u16, flags: u16, payload: F) -> Vec<u8>
where
    F: GenlFamily + Emitable + Debug,
{
    let mut genl = GenlMessage::from_payload(payload);
    genl.set_resolved_family_id(family_id);
    let mut message = NetlinkMessage::from(genl);
    message.header.flags = flags;
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}
