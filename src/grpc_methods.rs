//! The gRPC methods this service serves, by path (`/package.Service/Method`), read from the
//! descriptor sets it also serves by reflection: what the authentication gate and the metrics
//! tell apart from paths no method answers.

use std::{collections::HashSet, sync::Arc};

use prost::Message;
use prost_types::FileDescriptorSet;

/// Every method path served; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct GrpcMethods(Arc<HashSet<String>>);

impl GrpcMethods {
    /// The methods of every service in `sets` (encoded `FileDescriptorSet`s).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut paths = HashSet::new();
        for set in sets {
            for file in FileDescriptorSet::decode(*set)?.file {
                let package = file.package();
                for service in &file.service {
                    let prefix = if package.is_empty() {
                        service.name().to_owned()
                    } else {
                        format!("{package}.{}", service.name())
                    };
                    paths.extend(service.method.iter().map(|method| format!("/{prefix}/{}", method.name())));
                }
            }
        }
        Ok(Self(Arc::new(paths)))
    }

    /// Whether `path` names a method served here.
    pub fn contains(&self, path: &str) -> bool {
        self.0.contains(path)
    }
}
