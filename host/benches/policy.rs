//! Policy benchmark: see `celery-operator policy bench` until the full table lands here.
fn main() {}
