"""Identity providers a subscriber signs in with: ESIA (Gosuslugi) and generic OpenID Connect."""
