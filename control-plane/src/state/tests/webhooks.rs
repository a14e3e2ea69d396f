//! Webhooks in the state machine: enabling, rotating and disabling a code's webhook, its
//! refusal for unknown tenants and codes, its removal with the code, and reloading.

use super::{Harness, acme, spec};
use crate::state::{Command, Response, StateError, StateMachine, keys};

fn set(tenant: &str, code: &str, hash: Option<[u8; 32]>) -> Command {
    Command::SetWebhook { tenant: tenant.into(), code: code.into(), secret_sha256: hash }
}

fn hash_of(h: &Harness, tenant: &str, code: &str) -> Option<[u8; 32]> {
    h.sm.webhooks().get(&(tenant.to_string(), code.to_string())).map(|w| w.secret_sha256)
}

#[test]
fn enabling_rotating_and_disabling_a_webhook() {
    let mut h = acme();
    let r = h.apply(set("acme", "work", Some([1; 32])));
    assert_eq!(r, Response::Webhook { code: "work".into(), enabled: true });
    assert_eq!(hash_of(&h, "acme", "work"), Some([1; 32]));
    assert!(h.kv.map.contains_key(&keys::webhook("acme", "work")));

    h.now_ms += 10;
    h.apply(set("acme", "work", Some([2; 32])));
    assert_eq!(hash_of(&h, "acme", "work"), Some([2; 32]), "enabling again rotates the secret");
    assert_eq!(h.sm.webhooks()[&("acme".to_string(), "work".to_string())].enabled_ms, h.now_ms);

    let r = h.apply(set("acme", "work", None));
    assert_eq!(r, Response::Webhook { code: "work".into(), enabled: false });
    assert_eq!(hash_of(&h, "acme", "work"), None);
    assert!(!h.kv.map.contains_key(&keys::webhook("acme", "work")));
    // Disabling a webhook that is off is not an error, and changes nothing but the clock.
    let r = h.apply_unchanged(set("acme", "work", None));
    assert_eq!(r, Response::Webhook { code: "work".into(), enabled: false });
}

#[test]
fn unknown_tenants_and_codes_are_refused_and_change_nothing() {
    let mut h = acme();
    let r = h.apply_unchanged(set("nobody", "work", Some([1; 32])));
    assert_eq!(r, Response::Rejected(StateError::UnknownTenant("nobody".into())));
    let r = h.apply_unchanged(set("acme", "missing", Some([1; 32])));
    assert_eq!(r, Response::Rejected(StateError::CodeNotFound("missing".into())));
}

#[test]
fn deleting_a_code_deletes_its_webhook_and_a_new_code_of_that_name_has_none() {
    let mut h = acme();
    h.apply(set("acme", "work", Some([1; 32])));
    h.apply(set("acme", "pair", Some([3; 32])));
    assert_eq!(h.apply(Command::DeleteCode { tenant: "acme".into(), name: "work".into() }), Response::CodeDeleted);
    assert_eq!(hash_of(&h, "acme", "work"), None);
    assert_eq!(hash_of(&h, "acme", "pair"), Some([3; 32]), "other codes keep theirs");
    h.apply(Command::RegisterCode { tenant: "acme".into(), spec: spec("work", 0, 0) });
    assert_eq!(hash_of(&h, "acme", "work"), None);
}

#[test]
fn re_registering_a_code_keeps_its_webhook_and_reload_restores_webhooks() {
    let mut h = acme();
    h.apply(set("acme", "work", Some([7; 32])));
    h.apply(Command::RegisterCode { tenant: "acme".into(), spec: spec("work", 3, 1) });
    assert_eq!(hash_of(&h, "acme", "work"), Some([7; 32]));
    let loaded = StateMachine::load(&h.kv).expect("load");
    assert_eq!(loaded.webhooks(), h.sm.webhooks());
}
