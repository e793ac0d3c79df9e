//! sea-orm entities of the server's tables. Private to `store/`: nothing outside sees a row type.

pub(crate) mod task {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "tasks")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub user_name: String,
        pub status: String,
        #[sea_orm(column_type = "Text")]
        pub spec_json: String,
        #[sea_orm(column_type = "Text")]
        pub error_diag: String,
        pub idempotency_key: Option<String>,
        pub created_at: DateTimeUtc,
        pub modified_at: DateTimeUtc,
        pub old_status: Option<String>,
        pub awaits_input: bool,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod dataset {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "datasets")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub task_id: i64,
        pub status: String,
        pub created_at: DateTimeUtc,
        pub modified_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod file {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "files")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub dataset_id: i64,
        pub lfn: String,
        pub job_id: i64,
        pub status: String,
        pub size_bytes: i64,
        pub checksum: String,
        /// Events in the file (catalog inputs; 0 when unknown).
        pub n_events: i64,
        pub modified_at: DateTimeUtc,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod job {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "jobs")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub task_id: i64,
        pub job_index: i32,
        pub status: String,
        pub queue: String,
        pub attempt_nr: i32,
        #[sea_orm(column_type = "Text")]
        pub command: String,
        #[sea_orm(column_type = "Text")]
        pub environment_json: String,
        #[sea_orm(column_type = "Text")]
        pub input_files_json: String,
        #[sea_orm(column_type = "Text")]
        pub output_files_json: String,
        pub cores: i32,
        pub memory_mb: i64,
        pub disk_mb: i64,
        pub walltime_seconds: i64,
        pub priority: i32,
        pub lease_token: Option<String>,
        pub command_to_pilot: Option<String>,
        pub exit_code: Option<i32>,
        pub error_code: i32,
        #[sea_orm(column_type = "Text")]
        pub error_diag: String,
        #[sea_orm(column_type = "Text")]
        pub stdout_tail: String,
        #[sea_orm(column_type = "Text")]
        pub stderr_tail: String,
        pub cpu_time_seconds: f64,
        pub wall_time_seconds: f64,
        pub max_rss_kb: i64,
        pub node: String,
        pub worker_id: String,
        pub created_at: DateTimeUtc,
        pub started_at: Option<DateTimeUtc>,
        pub ended_at: Option<DateTimeUtc>,
        pub modified_at: DateTimeUtc,
        pub heartbeat_at: Option<DateTimeUtc>,
        pub superseded: bool,
        #[sea_orm(column_type = "Text")]
        pub state_times_json: String,
        pub error_source: String,
        pub merge: bool,
        pub share: String,
        pub row_version: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub(crate) mod queue {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "queues")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub name: String,
        pub status: String,
        pub max_cores: i32,
        pub max_memory_mb: i64,
        pub max_disk_mb: i64,
        pub max_walltime_seconds: i64,
        pub max_workers: i32,
        pub harvester_id: String,
        pub heartbeat_at: DateTimeUtc,
        pub site: String,
        #[sea_orm(column_type = "Text")]
        pub containers_json: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
