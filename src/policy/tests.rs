use super::*;

#[test]
fn embedded_default_is_valid() {
    let p = Policy::embedded().unwrap();
    assert!(p.queues.len() > 5);
}
