//! A crate without sea-orm, redis, mongodb or rusqlite: its own types
//! carry those clients' method names and must stay clean.
pub struct CommunityTag;

impl CommunityTag {
    pub fn update_many(conn: &mut Conn, ids: &[i32]) -> Result<usize, Error> {
        Ok(ids.len())
    }
    pub fn delete_many(conn: &mut Conn, ids: &[i32]) -> Result<usize, Error> {
        Ok(ids.len())
    }
}

pub fn tags(conn: &mut Conn, sessions: &mut Sessions) -> Result<(), Error> {
    CommunityTag::update_many(conn, &[1, 2])?; // lemmy's own `update_many`: fine
    CommunityTag::delete_many(conn, &[3])?; // fine
    sessions.insert_one(Session::default()); // no mongodb here: fine
    sessions.set("k", "v"); // no redis here: fine
    sessions.prepare("DELETE FROM sessions"); // no rusqlite here: fine
    Ok(())
}

pub fn raw(conn: &mut diesel::PgConnection) {
    diesel::sql_query("DELETE FROM community_tag").execute(conn).unwrap(); // DW002: diesel is a dependency
}
