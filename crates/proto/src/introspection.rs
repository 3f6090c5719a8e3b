//! What every Skiff gRPC port answers besides its own services: the
//! standard health service (`grpc.health.v1.Health`, what
//! `grpc_health_probe` and load balancers ask) and server reflection
//! (`grpc.reflection.v1`, what `grpcurl list` and `describe` read), both
//! from the ecosystem's crates (tonic-health, tonic-reflection).

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
pub use tonic_health::ServingStatus;

/// Skiff's own descriptors (every `skiff.v1` file), for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/skiff_descriptor.bin"));

/// The health service a port serves.
pub type Health = HealthServer<HealthService>;

/// The health service and the handle that sets what it answers (every
/// name starts unknown: a `Check` says NOT_FOUND until it is set).
pub fn health() -> (HealthReporter, Health) {
    let reporter = HealthReporter::new();
    let service = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    (reporter, service)
}

/// Sets the status of the whole process (`""`) and of each of `services`.
pub async fn set_status(reporter: &HealthReporter, services: &[&str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for s in services {
        reporter.set_service_status(*s, status).await;
    }
}

/// The reflection service: Skiff's services and the health service.
pub fn reflection() -> Result<
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::Error,
> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptors_compiled_in_make_a_reflection_service() {
        reflection().unwrap();
    }
}
