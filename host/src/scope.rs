//! Where the operator looks for Celery apps: every namespace, or a list of them. The
//! controllers, the autoscaler's cluster view and the CRD check all list and watch through it.

use kube::Client;
use kube::api::Api;

/// Where the operator looks for Celery apps.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
}

impl Scope {
    pub fn apis<K>(&self, client: &Client) -> Vec<Api<K>>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        if self.namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            self.namespaces.iter().map(|ns| Api::namespaced(client.clone(), ns)).collect()
        }
    }
}
