//! Key rotation: a new key is added, every credential is re-sealed, old
//! keys are dropped, and every credential still opens, while the server runs.

use berth_vault::{KEY_FILE_NAME, Keyring, MasterKey};

use crate::helpers::*;

#[tokio::test]
async fn rotation_reseals_everything_and_the_running_server_follows() {
    let app = spawn().await;
    let (c1, _) = app.connect_sandbox(&app.dev_token, "key-one").await;
    let (c2, _) = app.connect_sandbox(&app.dev_token, "key-two").await;
    let env = app
        .platform
        .authenticate_api_token(&app.dev_token)
        .await
        .unwrap();
    let key_file = app.data_dir.join(KEY_FILE_NAME);
    let old = Keyring::parse_list(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let before = app
        .platform
        .store()
        .get_credential(&env.id, &c1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        berth_vault::sealed_key_id(&before.sealed).unwrap(),
        old.active().id()
    );

    // what `berth vault rotate-key` does, from "another process"
    let new = old.with_new_key(MasterKey::generate());
    new.write_file(&key_file).unwrap();
    assert_eq!(app.platform.reseal_credentials().await.unwrap(), 2);
    assert_eq!(
        app.platform.reseal_credentials().await.unwrap(),
        0,
        "idempotent"
    );
    new.only_active().write_file(&key_file).unwrap();

    for (c, key) in [(c1.as_str(), "key-one"), (c2.as_str(), "key-two")] {
        let row = app
            .platform
            .store()
            .get_credential(&env.id, c)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            berth_vault::sealed_key_id(&row.sealed).unwrap(),
            new.active().id()
        );
        assert_eq!(row.version, 2);
        let cred = app.platform.load_credential(&env, c).await.unwrap();
        assert_eq!(cred.api_key.as_deref(), Some(key));
    }
    // new connections are sealed with the new key by the running server
    let (c3, _) = app.connect_sandbox(&app.dev_token, "key-three").await;
    let row = app
        .platform
        .store()
        .get_credential(&env.id, &c3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        berth_vault::sealed_key_id(&row.sealed).unwrap(),
        new.active().id()
    );
}

#[tokio::test]
async fn a_ciphertext_moved_to_another_connection_does_not_open() {
    let app = spawn().await;
    let (c1, _) = app.connect_sandbox(&app.dev_token, "key-one").await;
    let (c2, _) = app.connect_sandbox(&app.dev_token, "key-two").await;
    let env = app
        .platform
        .authenticate_api_token(&app.dev_token)
        .await
        .unwrap();
    let s = app.platform.store();
    let row1 = s.get_credential(&env.id, &c1).await.unwrap().unwrap();
    let row2 = s.get_credential(&env.id, &c2).await.unwrap().unwrap();
    assert!(
        s.replace_credential(&c2, row2.version, &row1.sealed, 1)
            .await
            .unwrap()
    );
    assert!(app.platform.load_credential(&env, &c2).await.is_err());
}
