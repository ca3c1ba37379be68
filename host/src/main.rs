//! The `celery-operator` binary; everything lives in the library, see `cli`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    celery_operator::cli::main().await
}
