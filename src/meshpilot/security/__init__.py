"""The mesh's security: certificate authority, workload identities and certificates, JWKS."""
